"""One direction of one recurrent layer, as the drop-in modules run it.

Two routes over the same functions (``_ops.run_forward``, ``_ops.gradients_from_residuals``),
with the same results bit for bit:

- **eager**, plain CPU tensors outside any tracing: a ``torch.autograd.Function``, or, when no
  gradient can be asked for, a direct call. A custom operator's call through torch's dispatcher
  and its Python autograd glue cost 0.4-1.4 ms per forward and backward of a layer (LSTM (32,
  100, 64, 128) and (8, 200, 32, 256), 2-core EPYC, 2026-12-04: 7-12% of the whole step), and
  the operator converts the weights to the Keras layout a second time in its backward; the
  Function keeps the converted weights for its backward instead. It saves every tensor it keeps
  with ``save_for_backward`` (arguments, converted weights, residuals), so saved-tensor hooks
  and in-place-modification checks see them as they see the operator's; where no hooks are at
  work, the forward direction also keeps ``gpukb.rnn_vjp``'s pullback itself (over the same
  memory), which its backward calls instead of rebuilding it.
- **the custom operators** (``_ops``) everywhere else: under ``torch.compile``, tracing and
  ``torch.func`` transforms, for tensor subclasses (fake tensors, for instance), under a
  dispatch mode, and for CUDA tensors (the eager route has not yet been run on a GPU).

``frozen_cell`` and ``run_cell`` serve a frozen module (``nn._RNNBase.freeze``): a call that
cannot be differentiated runs a frozen gpukb cell made once instead of the weights.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch.autograd.function import once_differentiable

from . import _ops

Tensor = torch.Tensor

_PLAIN = (torch.Tensor, torch.nn.Parameter)

#: Devices besides the CPU whose tensors take the eager route: none until it has run on a GPU
#: (asv_bench/results-gpu/dropin_eager_check.py adds "cuda" for its check).
EAGER_DEVICES: tuple[str, ...] = ()


def _functorch_active() -> bool:
    active = getattr(torch._C, "_are_functorch_transforms_active", None)
    return bool(active and active())


try:
    from torch.utils._python_dispatch import _get_current_dispatch_mode
except ImportError:   # where torch lacks it, take the operators: they work everywhere
    _get_current_dispatch_mode = None


def _dispatch_mode_active() -> bool:
    return _get_current_dispatch_mode is None or _get_current_dispatch_mode() is not None


def _saved_tensor_hooks_active() -> bool:
    """Whether saved-tensor hooks are in effect (torch.utils.checkpoint, save_on_cpu, ...); True
    where torch does not say (its private accessor missing or changed)."""
    top = getattr(torch._C._autograd, "_top_saved_tensors_default_hooks", None)
    try:
        return top is None or top(False) is not None
    except (TypeError, RuntimeError):
        return True


def eager(tensors: tuple[Optional[Tensor], ...]) -> bool:
    """Whether the eager route may run a call on these tensors (see the module docstring)."""
    if torch.compiler.is_compiling() or torch.jit.is_tracing():
        return False
    for t in tensors:   # a loop, is_cpu: a generator and t.device cost 2-3 us a call here
        if t is not None and (type(t) not in _PLAIN or not (
                t.is_cpu or t.device.type in EAGER_DEVICES)):
            return False
    return not (_functorch_active() or _dispatch_mode_active())


class _Direction(torch.autograd.Function):
    """The eager route with gradients: forward keeps the residuals and the weights in the Keras
    layout (neither with ``keep_residuals`` False: the backward converts the weights and runs the
    forward again), backward rebuilds the pullback from them."""

    @staticmethod
    def forward(ctx, mode: str, input: Tensor, h0: Tensor, c0: Optional[Tensor],
                mask: Optional[Tensor], w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor],
                b_hh: Optional[Tensor], reverse: bool, time_major: bool, keep_residuals: bool):
        weights = _ops.keras_weights(mode, w_ih, w_hh, b_ih, b_hh)
        output, h_n, c_n, kept, pullback = _ops.run_forward(
            mode, input, h0, c0, mask, weights, reverse, time_major, keep_residuals)
        arguments = [input, h0, c0, mask, w_ih, w_hh, b_ih, b_hh]
        output, h_n, c_n, *rest = _ops._unaliased([output, h_n, c_n, *kept[1:]], arguments)
        residuals = [output, *rest] if kept else []
        # The converted weights are kept with the residuals (not with recompute, which keeps
        # nothing but the arguments: its backward converts them again).
        ctx.save_for_backward(*arguments, *(weights if residuals else ()), *residuals)
        # The forward's own pullback, which holds nothing the saved tensors do not (the
        # reverse direction's holds its outputs in processing order, a copy: not kept), saves
        # the backward rebuilding it (0.07 ms of a 0.6 ms step at LSTM (1, 10, 16, 32)), unless
        # saved-tensor hooks are at work (checkpointing, offloading): they must see everything.
        keep_live = residuals and not reverse and not _saved_tensor_hooks_active()
        ctx.pullback = pullback if keep_live else None
        ctx.flags = (mode, reverse, time_major)
        ctx.set_materialize_grads(False)   # outputs without a gradient come as None (zeros)
        if mode != "lstm":
            ctx.mark_non_differentiable(c_n)   # a GRU's empty c_n
        return output, h_n, c_n

    @staticmethod
    @once_differentiable
    def backward(ctx, d_output, d_h_n, d_c_n):
        mode, reverse, time_major = ctx.flags
        input, h0, c0, mask, w_ih, w_hh, b_ih, b_hh, *rest = ctx.saved_tensors
        if rest:
            weights, residuals = rest[:3], rest[3:]
        else:
            weights, residuals = _ops.keras_weights(mode, w_ih, w_hh, b_ih, b_hh), []
        grads = _ops.gradients_from_residuals(mode, input, h0, c0, mask, weights, reverse,
                                              time_major, residuals, d_output, d_h_n, d_c_n,
                                              pullback=ctx.pullback)
        d_input, d_h0, d_c0, d_w_ih, d_w_hh, d_b_ih, d_b_hh = _ops._unaliased(
            grads, [input, h0, c0, mask, w_ih, w_hh, b_ih, b_hh, *residuals, d_output, d_h_n,
                    d_c_n])
        return (None, d_input, d_h0, None if c0 is None else d_c0, None, d_w_ih, d_w_hh,
                None if b_ih is None else d_b_ih, None if b_hh is None else d_b_hh, None, None,
                None)


def run(mode: str, input: Tensor, h0: Tensor, c0: Optional[Tensor], mask: Optional[Tensor],
        w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor], b_hh: Optional[Tensor], reverse: bool,
        time_major: bool, *, differentiable: bool, recompute: bool
        ) -> tuple[Tensor, Tensor, Tensor]:
    """``(output, h_n, c_n)`` of one direction (c_n an empty tensor for a GRU).
    ``differentiable``: a gradient can be asked for (grad mode on and some tensor requires
    one); ``recompute``: keep no residuals, run the forward again in the backward."""
    keep = differentiable and not recompute
    tensors = (input, h0, c0, mask, w_ih, w_hh, b_ih, b_hh)
    if not eager(tensors):
        output, h_n, c_n, _ = _ops.rnn_forward(mode, *tensors, reverse, time_major, keep)
        return output, h_n, c_n
    if differentiable:
        return _Direction.apply(mode, *tensors, reverse, time_major, keep)
    weights = _ops.keras_weights(mode, w_ih, w_hh, b_ih, b_hh)
    output, h_n, c_n, _, _ = _ops.run_forward(mode, input, h0, c0, mask, weights, reverse,
                                              time_major, False)
    output, h_n, c_n = _ops._unaliased([output, h_n, c_n], list(tensors))
    return output, h_n, c_n


def frozen_cell(mode: str, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor],
                b_hh: Optional[Tensor]):
    """A frozen gpukb cell (private NumPy copies of the weights in Keras's layout, packed for
    the kernels on its first call) of one direction's CPU weights, for ``run_cell``."""
    weights = _ops.keras_weights(mode, w_ih, w_hh, b_ih, b_hh)
    return _ops.cell_of(mode, weights).freeze()


def run_cell(mode: str, cell, input: Tensor, h0: Tensor, c0: Optional[Tensor],
             mask: Optional[Tensor], reverse: bool, time_major: bool
             ) -> tuple[Tensor, Tensor, Tensor]:
    """``run``'s result for a call from which no gradient can be asked for, on ``cell``
    (``frozen_cell``) instead of the weights: the same bits."""
    tensors = (input, h0, c0, mask)
    output, h_n, c_n, _, _ = _ops.run_forward(mode, input, h0, c0, mask, None, reverse,
                                              time_major, False, cell=cell)
    output, h_n, c_n = _ops._unaliased([output, h_n, c_n], list(tensors))
    return output, h_n, c_n
