"""``gpukb_torch.LSTM`` and ``gpukb_torch.GRU``: torch.nn.LSTM/GRU run by gpukb's fused kernels.

Same constructor, parameter names, shapes and initialisation as torch's modules (so
``load_state_dict`` works both ways, and one seed gives both the same weights), the same
``forward`` results (tensors or a ``PackedSequence``), plus gpukb's extension: ``mask=``, a
``(B, T)`` boolean tensor of any pattern (True = a valid step; a masked step holds the state and
outputs zeros). Each direction of each layer is one call of ``_direction.run``: the
``gpukb_torch::rnn_forward`` custom operator (``_ops``) where torch traces or transforms the call,
the same functions without the operator's machinery in plain eager use on the CPU;
differentiable through ``gpukb.rnn_vjp``'s residuals, or with ``recompute=True`` (a constructor
keyword and attribute) through a forward run again in the backward, so that autograd keeps no
residuals.

They subclass ``torch.nn.Module``, not ``torch.nn.RNNBase``: TorchDynamo graph-breaks on every
RNNBase, and ``torch.compile`` should see these modules' ops.
"""

from __future__ import annotations

import math
import numbers
import warnings
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from . import _direction
from ._weights import GATES


class _RNNBase(torch.nn.Module):
    _mode = ""  # "lstm" or "gru"

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 device: Any = None, dtype: Any = None, *, recompute: bool = False) -> None:
        super().__init__()
        name = type(self).__name__
        for arg, value in (("input_size", input_size), ("hidden_size", hidden_size),
                           ("num_layers", num_layers)):
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"{name}: {arg} must be an int, got {type(value).__name__}.")
            if value <= 0:
                raise ValueError(f"{name}: {arg} must be greater than zero, got {value}.")
        for arg, value in (("bias", bias), ("batch_first", batch_first),
                           ("bidirectional", bidirectional)):
            if not isinstance(value, bool):
                raise TypeError(f"{name}: {arg} must be a bool, got {type(value).__name__}.")
        if (not isinstance(dropout, numbers.Number) or isinstance(dropout, bool)
                or not 0 <= dropout <= 1):
            raise ValueError(f"{name}: dropout must be a number in [0, 1], got {dropout!r}.")
        if dropout > 0 and num_layers == 1:
            warnings.warn(  # torch's warning: dropout only acts between layers
                f"{name}: dropout adds dropout after all but the last recurrent layer, so a "
                f"non-zero dropout expects num_layers greater than 1, got dropout={dropout} and "
                f"num_layers={num_layers}", stacklevel=3)
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bias = bias
        self.batch_first = batch_first
        self.dropout = float(dropout)
        self.bidirectional = bidirectional
        self.recompute = recompute  # checked by the property's setter
        self._keep_cells = False              # freeze() is in effect
        self._frozen: _Frozen | None = None   # its cells, made on first need
        factory = {"device": device, "dtype": dtype}
        gate_size = GATES[self._mode] * hidden_size
        # torch's names and registration order: the state_dict's keys and, through
        # reset_parameters, the order random numbers are drawn in.
        for layer in range(num_layers):
            for suffix in self._suffixes:
                layer_input = input_size if layer == 0 else hidden_size * self._directions
                params: dict[str, tuple[int, ...]] = {
                    "weight_ih": (gate_size, layer_input),
                          "weight_hh": (gate_size, hidden_size)}
                if bias:
                    params.update(bias_ih=(gate_size,), bias_hh=(gate_size,))
                for param, shape in params.items():
                    setattr(self, f"{param}_l{layer}{suffix}",
                            torch.nn.Parameter(torch.empty(shape, **factory)))
        self.reset_parameters()

    @property
    def recompute(self) -> bool:
        """True: a forward under autograd keeps no residuals, and the backward runs the forward
        again to get them (less memory, one more forward per backward; the same gradients)."""
        return self._recompute

    @recompute.setter
    def recompute(self, value: bool) -> None:
        if not isinstance(value, bool):
            raise TypeError(f"{type(self).__name__}: recompute must be a bool, got "
                            f"{type(value).__name__}.")
        self._recompute = value

    # ----------------------------------------------------------------------------------------
    # inference: cells kept between calls
    # ----------------------------------------------------------------------------------------

    def freeze(self) -> "_RNNBase":
        """Keep gpukb's cells between inference calls; returns the module.

        Every call otherwise converts the weights to Keras's layout, makes the cells and packs
        their weights for the kernels (training changes them at every step). Once frozen, a
        call from which no gradient can be asked for (``torch.no_grad``, ``inference_mode``, or
        nothing requiring one), on CPU tensors outside any tracing, runs frozen gpukb cells made
        once (``gpukb.cells.Cell.freeze``: private copies of the weights, packed once): the
        same bits. The parameters are still watched: a call after any of them was changed in
        place (an optimizer step, ``load_state_dict``, ``copy_`` under ``no_grad``) or replaced
        (``.to()``, assigning ``.data``) makes the cells again; only writes through ``.data``
        (``p.data.add_(...)``), which torch does not count, go unseen. Calls that can be
        differentiated, and CUDA tensors, run as before. ``unfreeze()`` lets the cells go."""
        self._keep_cells = True
        self._frozen = None   # made at the first call that uses them
        return self

    def unfreeze(self) -> "_RNNBase":
        """Let ``freeze``'s cells go (every call makes its own again); returns the module."""
        self._keep_cells = False
        self._frozen = None
        return self

    @property
    def frozen(self) -> bool:
        """Whether ``freeze`` is in effect."""
        return getattr(self, "_keep_cells", False)

    def _frozen_cells(self) -> "_Frozen":
        """``freeze``'s cells, made on first need and again when a parameter changed since."""
        frozen = self._frozen
        if frozen is None or frozen.stamp != _Frozen.stamp_of(self):
            frozen = self._frozen = _Frozen.of(self)
        return frozen

    def __getstate__(self) -> dict:
        # The cells hold compiled kernels' plans, which cannot be pickled (torch.save of the
        # whole module, copy.deepcopy): they are left out and made again on first need.
        return {**self.__dict__, "_frozen": None}

    @property
    def _directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def _suffixes(self) -> tuple[str, ...]:
        return ("", "_reverse") if self.bidirectional else ("",)

    def reset_parameters(self) -> None:
        """torch's initialisation: every weight and bias uniform in ±1/sqrt(hidden_size)."""
        stdv = 1.0 / math.sqrt(self.hidden_size)
        for weight in self.parameters():
            torch.nn.init.uniform_(weight, -stdv, stdv)

    def _weights(self, layer: int, suffix: str) -> tuple[Tensor | None, ...]:
        get = lambda param: getattr(self, f"{param}_l{layer}{suffix}", None)  # noqa: E731
        return get("weight_ih"), get("weight_hh"), get("bias_ih"), get("bias_hh")

    def extra_repr(self) -> str:
        text = f"{self.input_size}, {self.hidden_size}"
        for arg, default in (("num_layers", 1), ("bias", True), ("batch_first", False),
                             ("dropout", 0.0), ("bidirectional", False), ("recompute", False)):
            if getattr(self, arg) != default:
                text += f", {arg}={getattr(self, arg)}"
        return text

    # ----------------------------------------------------------------------------------------
    # forward
    # ----------------------------------------------------------------------------------------

    def forward(self, input: Tensor | PackedSequence, hx: Any = None, *,
                mask: Tensor | None = None) -> tuple[Any, Any]:
        """torch's ``forward(input, hx)``: ``(output, h_n)`` (GRU) or ``(output, (h_n, c_n))``
        (LSTM), and a ``PackedSequence`` output for a ``PackedSequence`` input. ``mask``: a
        ``(B, T)`` boolean tensor (``(T,)`` for an unbatched input), True = a valid step."""
        name = type(self).__name__
        packed = input if isinstance(input, PackedSequence) else None
        if packed is not None:
            if mask is not None:
                raise ValueError(f"{name}: pass either a PackedSequence or a mask, not both "
                                 "(a PackedSequence is already masked by its lengths).")
            x, lengths = pad_packed_sequence(packed, batch_first=False)  # (T, B, D), users' order
            positions = torch.arange(x.shape[0], device=x.device)
            mask = positions[None, :] < lengths.to(x.device)[:, None]
            batched, time_major = True, True
        else:
            if not isinstance(input, Tensor):
                raise TypeError(f"{name}: input must be a torch.Tensor or a PackedSequence, "
                                f"not {type(input).__name__}.")
            if input.dim() not in (2, 3):
                raise ValueError(f"{name}: Expected input to be 2D or 3D, got {input.dim()}D "
                                 "instead.")
            batched, time_major = input.dim() == 3, not self.batch_first
            x = input if batched else input.unsqueeze(1 if time_major else 0)
        self._check_input(x)
        batch = x.shape[1] if time_major else x.shape[0]
        steps = x.shape[0] if time_major else x.shape[1]
        mask = self._check_mask(mask, batch, steps, batched, x.device)
        if mask is not None and time_major:
            mask = mask.t()  # the ops take the mask in the input's layout
        h0, c0 = self._initial_states(hx, batch, batched, x)

        output, h_n, c_n = self._layers(x, h0, c0, mask, time_major)
        if packed is not None:
            return _packed_like(packed, output, lengths), self._hidden(h_n, c_n)
        if not batched:
            output = output.squeeze(1 if time_major else 0)
            h_n, c_n = h_n.squeeze(1), (None if c_n is None else c_n.squeeze(1))
        return output, self._hidden(h_n, c_n)

    def _hidden(self, h_n: Tensor, c_n: Tensor | None) -> Any:
        """torch's second result: ``(h_n, c_n)`` for an LSTM, ``h_n`` for a GRU."""
        return (h_n, c_n) if self._mode == "lstm" else h_n

    def _layers(self, x: Tensor, h0: Tensor, c0: Tensor | None, mask: Tensor | None,
                time_major: bool) -> tuple[Tensor, Tensor, Tensor | None]:
        h_n, c_n = [], []
        # The forward keeps what the backward needs only when a gradient can be asked for (under
        # torch.no_grad, or with nothing that requires one, it runs gpukb.rnn, which keeps nothing)
        # and recompute is off (then the backward runs the forward again).
        differentiable = torch.is_grad_enabled() and (
            any(p.requires_grad for p in self.parameters())
            or any(t is not None and t.requires_grad for t in (x, h0, c0)))
        frozen = None
        # getattr: a module pickled by an older gpukb-torch has no _keep_cells
        if getattr(self, "_keep_cells", False) and not differentiable and _direction.eager(
                (x, h0, c0, mask, *self.parameters())):
            frozen = self._frozen_cells()
        for layer in range(self.num_layers):
            if layer > 0 and self.training and self.dropout > 0:
                x = torch.nn.functional.dropout(x, self.dropout, training=True)
            outputs = []
            for direction, suffix in enumerate(self._suffixes):
                index = layer * self._directions + direction
                c = None if c0 is None else c0[index]
                if frozen is not None:
                    output, h, c = _direction.run_cell(self._mode, frozen.cells[index], x,
                                                       h0[index], c, mask, direction == 1,
                                                       time_major)
                else:
                    output, h, c = _direction.run(self._mode, x, h0[index], c, mask,
                                                  *self._weights(layer, suffix), direction == 1,
                                                  time_major, differentiable=differentiable,
                                                  recompute=self.recompute)
                outputs.append(output)
                h_n.append(h)
                c_n.append(c)
            x = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=-1)
        return x, torch.stack(h_n), torch.stack(c_n) if c0 is not None else None

    # ----------------------------------------------------------------------------------------
    # argument checks (before any work)
    # ----------------------------------------------------------------------------------------

    def _check_input(self, x: Tensor) -> None:
        name = type(self).__name__
        weight = self.weight_ih_l0
        if x.dtype not in (torch.float32, torch.float64):
            raise TypeError(f"{name}: input must be float32 or float64 (gpukb's kernels), got "
                            f"{x.dtype}.")
        if x.dtype != weight.dtype:
            raise ValueError(f"{name}: input dtype ({x.dtype}) does not match the weights' "
                             f"dtype ({weight.dtype}); convert one with .to().")
        if x.device != weight.device:
            raise ValueError(f"{name}: input is on {x.device} but the weights are on "
                             f"{weight.device}.")
        if x.shape[-1] != self.input_size:
            raise ValueError(f"{name}: input.size(-1) must equal input_size={self.input_size}, "
                             f"got {x.shape[-1]}.")

    def _check_mask(self, mask: Any, batch: int, steps: int, batched: bool,
                    device: torch.device) -> Tensor | None:
        name = type(self).__name__
        if mask is None:
            return None
        if not isinstance(mask, Tensor):
            raise TypeError(f"{name}: mask must be a torch.Tensor of dtype bool, not "
                            f"{type(mask).__name__}.")
        if mask.dtype != torch.bool:
            raise TypeError(f"{name}: mask must have dtype torch.bool, got {mask.dtype}.")
        expected = (batch, steps) if batched else (steps,)
        if tuple(mask.shape) != expected:
            raise ValueError(f"{name}: mask must have shape {expected} ((batch, time) whatever "
                             f"batch_first is), got {tuple(mask.shape)}.")
        if mask.device != device:
            raise ValueError(f"{name}: mask is on {mask.device} but the input is on {device}.")
        return mask if batched else mask[None, :]

    def _initial_states(self, hx: Any, batch: int, batched: bool,
                        x: Tensor) -> tuple[Tensor, Tensor | None]:
        name = type(self).__name__
        lstm = self._mode == "lstm"
        shape = (self.num_layers * self._directions, batch, self.hidden_size)
        if hx is None:
            zeros = x.new_zeros(shape)
            return zeros, (x.new_zeros(shape) if lstm else None)
        if lstm:
            if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                raise TypeError(f"{name}: hx must be a tuple (h_0, c_0), not "
                                f"{type(hx).__name__}.")
            states = {"h_0": hx[0], "c_0": hx[1]}
        else:
            states = {"hx": hx}
        checked = []
        for arg, state in states.items():
            if not isinstance(state, Tensor):
                raise TypeError(f"{name}: {arg} must be a torch.Tensor, not "
                                f"{type(state).__name__}.")
            if not batched:
                if state.dim() != 2:
                    raise ValueError(f"{name}: for an unbatched 2-D input, {arg} must be 2-D, "
                                     f"got {state.dim()}-D.")
                state = state.unsqueeze(1)
            if tuple(state.shape) != shape:
                raise ValueError(f"{name}: {arg} must have shape {shape} (num_layers * "
                                 f"num_directions, batch, hidden_size), got "
                                 f"{tuple(state.shape)}.")
            if state.dtype != x.dtype or state.device != x.device:
                raise ValueError(f"{name}: {arg} must have the input's dtype and device "
                                 f"({x.dtype}, {x.device}), got ({state.dtype}, "
                                 f"{state.device}).")
            checked.append(state)
        return checked[0], (checked[1] if lstm else None)


class _Frozen(NamedTuple):
    """``freeze``'s state: a frozen gpukb cell per layer and direction (in ``_layers``' order),
    and the parameters' stamp they were made from."""
    cells: list
    stamp: tuple

    @staticmethod
    def stamp_of(module: "_RNNBase") -> tuple:
        """What changes when a parameter is changed in place (torch's version counter) or
        replaced (another tensor, memory, dtype or device)."""
        return tuple((id(p), p._version, p.data_ptr(), p.dtype, p.device)
                     for p in module.parameters())

    @classmethod
    def of(cls, module: "_RNNBase") -> "_Frozen":
        cells = [_direction.frozen_cell(module._mode, *module._weights(layer, suffix))
                 for layer in range(module.num_layers) for suffix in module._suffixes]
        return cls(cells, cls.stamp_of(module))


def _packed_like(packed: PackedSequence, padded: Tensor, lengths: Tensor) -> PackedSequence:
    """``padded`` (T, B, ...) in the users' batch order, packed with ``packed``'s batch order."""
    order = packed.sorted_indices
    if order is not None:
        padded, lengths = padded.index_select(1, order), lengths[order.cpu()]
    data = pack_padded_sequence(padded, lengths, enforce_sorted=True).data
    return PackedSequence(data, packed.batch_sizes, packed.sorted_indices,
                          packed.unsorted_indices)


class LSTM(_RNNBase):
    """``torch.nn.LSTM`` on gpukb's fused LSTM kernels; ``proj_size`` is not supported."""

    _mode = "lstm"

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 proj_size: int = 0, device: Any = None, dtype: Any = None, *,
                 recompute: bool = False) -> None:
        if proj_size != 0:
            raise NotImplementedError(
                f"LSTM: proj_size={proj_size} is not supported: gpukb's LSTM cell has no "
                "projection (use proj_size=0, or torch.nn.LSTM)."
            )
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, device, dtype, recompute=recompute)

    @property
    def proj_size(self) -> int:
        return 0


class GRU(_RNNBase):
    """``torch.nn.GRU`` on gpukb's fused GRU kernels (Keras's GRU with ``reset_after=True``)."""

    _mode = "gru"
