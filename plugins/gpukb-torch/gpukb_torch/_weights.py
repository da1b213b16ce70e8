"""torch.nn.LSTM/GRU weights <-> gpukb's cells (the Keras layout), and their gradients back.

torch keeps one direction of one layer as ``weight_ih (G*H, D)``, ``weight_hh (G*H, H)``,
``bias_ih``/``bias_hh (G*H,)``, gate blocks stacked along the rows. Keras (gpukb.cells) keeps
``kernel (D, G*H)``, ``recurrent_kernel (H, G*H)``, gate blocks along the columns:

- LSTM: torch's gates i, f, g, o are Keras's i, f, c, o (same order); torch adds ``bias_ih`` and
  ``bias_hh`` everywhere, so Keras's one bias is their sum.
- GRU: torch's gates r, z, n against Keras's z, r, h, so blocks 0 and 1 swap. torch computes
  ``n = tanh(W_in x + b_in + r * (W_hn h + b_hn))``: Keras's GRU with ``reset_after=True``, whose
  ``(2, 3H)`` bias holds the input bias (row 0) and the recurrent bias (row 1).

Everything here is torch on torch tensors, so it runs on the tensors' device; the results are
contiguous, ready to be viewed as NumPy or CuPy arrays.
"""

from __future__ import annotations

import torch

GATES = {"lstm": 4, "gru": 3}


def _keras_gate_order(mode: str, rows: torch.Tensor) -> torch.Tensor:
    """torch's gate blocks (along dim 0) in Keras's order; the GRU swap is its own inverse."""
    if mode == "lstm":
        return rows
    r, z, n = rows.chunk(3, dim=0)
    return torch.cat([z, r, n], dim=0)


def to_keras(mode: str, w_ih: torch.Tensor, w_hh: torch.Tensor, b_ih: torch.Tensor | None,
             b_hh: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(kernel, recurrent_kernel, bias)`` of the gpukb cell equal to torch's weights."""
    kernel = _keras_gate_order(mode, w_ih.detach()).t().contiguous()
    recurrent_kernel = _keras_gate_order(mode, w_hh.detach()).t().contiguous()
    if b_ih is None or b_hh is None:
        return kernel, recurrent_kernel, None
    b_ih, b_hh = b_ih.detach(), b_hh.detach()
    if mode == "lstm":
        return kernel, recurrent_kernel, (b_ih + b_hh).contiguous()
    bias = torch.stack([_keras_gate_order(mode, b_ih), _keras_gate_order(mode, b_hh)])
    return kernel, recurrent_kernel, bias.contiguous()


def grads_to_torch(mode: str, d_kernel: torch.Tensor, d_recurrent_kernel: torch.Tensor,
                   d_bias: torch.Tensor | None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """The gradients of the Keras weights as ``(d_w_ih, d_w_hh, d_b_ih, d_b_hh)`` (torch's
    layout); without a bias the bias gradients are None."""
    d_w_ih = _keras_gate_order(mode, d_kernel.t()).contiguous()
    d_w_hh = _keras_gate_order(mode, d_recurrent_kernel.t()).contiguous()
    if d_bias is None:
        return d_w_ih, d_w_hh, None, None
    if mode == "lstm":  # the bias is b_ih + b_hh: both get its gradient
        return d_w_ih, d_w_hh, d_bias.clone(), d_bias.clone()
    return (d_w_ih, d_w_hh, _keras_gate_order(mode, d_bias[0]).contiguous(),
            _keras_gate_order(mode, d_bias[1]).contiguous())
