"""Which rnn calls a fused cell kernel may take over, and what the kernels are told; shared by every
backend that has fused cell kernels.

A fused kernel computes exactly what running the cell through the generic loop computes, but only
for the plain case: one rank-3 input array, the cell's own states as a flat list/tuple of
``(B, H)`` arrays, everything in the cell's dtype (float32 or float64) and array library.
(``Backend.rnn`` has cast floating inputs and states to the cell's dtype before, once, for both
paths: see ``Cell.cast_rnn_arguments``.)
Anything else goes to the generic loop, which runs the cell itself and so raises the cell's own
errors: the fused path never changes a result or swallows an error.
"""

from __future__ import annotations

import numpy as np

from ._dtypes import numpy_dtype
from .cells import Cell
from .kernels.options import LoopOptions

FUSED_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _library(x) -> str:
    return type(x).__module__.split(".")[0]


def cell_problem(call) -> str | None:
    """Why no fused cell kernel may run ``call`` (a ``gpukb._rnn.RnnCall``), or None if one may."""
    cell = call.step_function
    if not isinstance(cell, Cell):
        return "the step function is not a gpukb.cells cell"
    dtype = np.dtype(cell.dtype)
    if dtype not in FUSED_DTYPES:
        return f"the cell computes in {dtype}; the fused kernels take float32 or float64"
    if len(call.input_leaves) != 1 or call.input_treespec.num_nodes != 1:
        return "the inputs are nested; the fused kernels take one array"
    x = call.input_leaves[0]
    if x.ndim != 3:
        return f"the input has rank {x.ndim}; the fused kernels take (batch, time, features)"
    if x.shape[2] != cell.input_dim or numpy_dtype(x.dtype) != dtype:
        return "the input does not fit the cell (features or dtype)"
    states = call.initial_states
    if not isinstance(states, (list, tuple)) or len(states) != cell.n_states:
        return f"initial_states is not a flat list or tuple of the cell's {cell.n_states} state(s)"
    for s in states:  # the container's items themselves, so [[h]] is not taken for [h]
        if not hasattr(s, "shape") or not hasattr(s, "dtype"):
            return "initial_states is not a flat list or tuple of arrays"
        if tuple(s.shape) != (call.batch_size, cell.units) or numpy_dtype(s.dtype) != dtype:
            return f"a state is not a (batch, {cell.units}) {dtype} array"
    library = _library(cell.kernel)
    if not all(_library(a) == library for a in [x, *call.state_leaves]):
        return f"the arrays are not all {library} arrays, like the cell's weights"
    return None


def fused_cell(call):
    """The cell of ``call`` when a fused kernel may run it, else None."""
    return call.step_function if cell_problem(call) is None else None


def loop_options(call) -> LoopOptions:
    """The flags every kernel takes from the call, as the kernels' one options object."""
    return LoopOptions(go_backwards=bool(call.go_backwards),
                       zero_output_for_mask=bool(call.zero_output_for_mask),
                       return_all_outputs=bool(call.return_all_outputs),
                       time_major=bool(call.time_major))
