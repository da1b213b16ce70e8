"""The cpu backend's fused vjp of a ``gpukb.cells`` cell: ``run_cell`` forwards,
``gpukb.kernels.cpu.backward.cell_backward`` backwards.

The forward is ``run_cell`` with every step's output kept (``return_all_outputs=True``): the same
computation as ``gpukb.rnn``'s, which only stores the last step's output in that case, so the
values are ``gpukb.rnn``'s bitwise. The forward also fills what the backward needs
(``kernels.cpu.backward.kept_buffers``: the gates' pre-activations, the LSTM's cell states); the
backward rebuilds the states before each step from the outputs. What a call keeps for its
pullback: references to its arguments, the outputs of every step (``B * T * H`` values) and the
kept buffers (LSTM ``5H``, GRU ``6H``, GRU without reset_after ``3H``, SimpleRNN nothing, per
sample and step); with ``recompute`` only the outputs, and the pullback runs the forward again.

Residuals (``rnn_vjp(return_residuals=True)``, ``rnn_pullback``): exactly those arrays, as
``residual_specs`` lists them: every step's output (the layout of ``time_major``, processing
order), then the kept buffers a kind has (``(T, B, K)`` pre-activations, the LSTM's ``(T, B, H)``
cell states). ``from_residuals`` rebuilds the same backward from them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .._fused import loop_options
from .._rnn import RnnCall
from .cotangents import Grads
from .fused import cell_grads, result_like


def residual_specs(call: RnnCall) -> tuple:
    """``(shape, dtype)`` of each residual of a fused call (see the module docstring)."""
    from gpukb.kernels.cpu.backward import KEPT_GATES
    from gpukb.kernels.cells import LSTM

    cell: Any = call.step_function
    kind = cell.kernel_layout.kind
    T, B, H = call.time_steps, call.batch_size, cell.units
    dtype = np.dtype(cell.dtype)
    specs = [((T, B, H) if call.time_major else (B, T, H), dtype)]
    if KEPT_GATES[kind]:
        specs.append(((T, B, KEPT_GATES[kind] * H), dtype))
    if kind == LSTM:
        specs.append(((T, B, H), dtype))
    return tuple(specs)


def fused_cell_vjp(call: RnnCall, recompute: bool = False) -> tuple[tuple, Any]:
    """``(rnn's result, backward)`` for a call that ``gpukb._fused.cell_problem`` accepts;
    ``recompute``: keep only the outputs, and run the forward again in the backward.
    ``backward.residuals``: what it keeps beyond the call's arguments (None with ``recompute``)."""
    from gpukb.kernels import cpu as kernels  # compiles lazily, on the first fused call
    from gpukb.kernels.cpu.backward import kept_buffers

    cell: Any = call.step_function
    options = loop_options(call)
    kind = cell.kernel_layout.kind
    x = call.input_leaves[0]
    kept = None if recompute else kept_buffers(kind, call.time_steps, call.batch_size,
                                                 cell.units, x.dtype)
    last, every, states = kernels.run_cell(
        kind, x, cell.kernel, cell.recurrent_kernel, cell.bias, call.state_leaves,
        call.step_mask, options._replace(return_all_outputs=True), cell.activation,
        _recurrent_activation(cell), kept=kept,
        weight_cache=getattr(cell, "_kernel_cache", None))   # a frozen cell's (Cell.freeze)
    outputs = every
    if not options.return_all_outputs:
        outputs = (every[-1:] if options.time_major else every[:, -1:]).copy()
    result = (last, outputs, call.pack_states(list(states)))
    backward = _Backward(call, every, kept)
    if recompute:
        backward.residuals = None
    return result, backward


def from_residuals(call: RnnCall, residuals: tuple) -> tuple[tuple, Any]:
    """``(arrays shaped like rnn's result, backward)`` from a fused call's residuals (checked
    against ``residual_specs`` by the caller): the backward ``fused_cell_vjp`` would return."""
    every, *kept = residuals
    # What a kind does not keep is a placeholder, as in kernels.cpu.backward.kept_buffers.
    placeholder = np.zeros((1, 1, 1), every.dtype)
    kept_pair = (*kept, *(placeholder,) * (2 - len(kept)))
    return result_like(call, every), _Backward(call, every, kept_pair)


def _recurrent_activation(cell: Any) -> str:
    return getattr(cell, "recurrent_activation", "linear")


class _Backward:
    """``backward(d_out, d_last, d_states) -> Grads`` over a forward's outputs and kept buffers;
    ``residuals``: those arrays, as ``residual_specs`` lists them."""

    def __init__(self, call: RnnCall, every: Any, kept: Any):
        self.call, self.every, self.kept = call, every, kept
        self.residuals: tuple | None = None
        if kept is not None:   # kept: (pre-activations, cell states), placeholders past the real
            self.residuals = (every, *kept)[:len(residual_specs(call))]

    def __call__(self, d_out: list, d_last: list, d_states: list) -> Grads:
        from gpukb.kernels.cpu.backward import cell_backward

        call, every = self.call, self.every
        cell: Any = call.step_function
        # d_outputs read in place when it holds every step (the layout and order of `every`);
        # else only the last step's, which joins d_last_output.
        if call.return_all_outputs:
            gy, last = d_out[0], d_last[0]
        else:
            gy, last = None, (d_out[0][0] if call.time_major else d_out[0][:, 0]) + d_last[0]
        grads = cell_backward(cell.kernel_layout.kind, call.input_leaves[0], cell.kernel,
                              cell.recurrent_kernel, cell.bias, call.state_leaves,
                              call.step_mask, loop_options(call), cell.activation,
                              _recurrent_activation(cell), every, gy, d_states, self.kept,
                              weight_cache=getattr(cell, "_kernel_cache", None),   # frozen cells
                              d_last=last)
        return cell_grads(np, call, grads)
