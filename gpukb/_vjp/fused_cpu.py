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
"""

from __future__ import annotations

from typing import Any

import numpy as np
import optree

from .._fused import loop_options
from .._rnn import RnnCall
from .cotangents import Grads, differentiable


def fused_cell_vjp(call: RnnCall, recompute: bool = False) -> tuple[tuple, Any]:
    """``(rnn's result, backward)`` for a call that ``gpukb._fused.cell_problem`` accepts;
    ``recompute``: keep only the outputs, and run the forward again in the backward."""
    from gpukb.kernels import cpu as kernels  # compiles lazily, on the first fused call
    from gpukb.kernels.cpu.backward import kept_buffers

    cell: Any = call.step_function
    options = loop_options(call)
    ract = getattr(cell, "recurrent_activation", "linear")
    kind = cell.kernel_layout.kind
    x = call.input_leaves[0]
    kept = None if recompute else kept_buffers(kind, call.time_steps, call.batch_size,
                                                 cell.units, x.dtype)
    last, every, states = kernels.run_cell(
        kind, x, cell.kernel, cell.recurrent_kernel, cell.bias, call.state_leaves,
        call.step_mask, options._replace(return_all_outputs=True), cell.activation, ract,
        kept=kept)
    outputs = every
    if not options.return_all_outputs:
        outputs = (every[-1:] if options.time_major else every[:, -1:]).copy()
    result = (last, outputs, call.pack_states(list(states)))

    def backward(d_out: list, d_last: list, d_states: list) -> Grads:
        from gpukb.kernels.cpu.backward import cell_backward

        steps = call.time_steps
        gy = np.zeros((steps, call.batch_size, cell.units), dtype=every.dtype)
        if options.return_all_outputs:
            gy[...] = d_out[0] if options.time_major else np.swapaxes(d_out[0], 0, 1)
        else:
            gy[-1] = d_out[0][0] if options.time_major else d_out[0][:, 0]
        gy[-1] += d_last[0]
        grads = cell_backward(kind, x, cell.kernel, cell.recurrent_kernel, cell.bias,
                              call.state_leaves, call.step_mask, options, cell.activation, ract,
                              every, gy, d_states, kept)
        weights = {"kernel": grads["kernel"], "recurrent_kernel": grads["recurrent_kernel"]}
        if cell.bias is not None:
            weights["bias"] = grads["bias"]
        constants: Any = call.constants
        leaves, treespec = optree.tree_flatten(constants)
        d_constants = [np.zeros_like(c) if differentiable(c) else None for c in leaves]
        return Grads(inputs=grads["inputs"], initial_states=call.pack_states(grads["states"]),
                     constants=optree.tree_unflatten(treespec, d_constants) if constants else None,
                     weights=weights)

    return result, backward
