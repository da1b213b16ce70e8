"""Which rnn calls a fused cell kernel may take over; shared by every backend that has one.

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

FUSED_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _library(x) -> str:
    return type(x).__module__.split(".")[0]


def fused_cell(call):
    """The cell of ``call`` (a ``gpukb._rnn.RnnCall``) when a fused kernel may run it, else None."""
    cell = call.step_function
    if not isinstance(cell, Cell):
        return None
    dtype = np.dtype(cell.dtype)
    if dtype not in FUSED_DTYPES:
        return None
    if len(call.input_leaves) != 1 or call.input_treespec.num_nodes != 1:
        return None
    x = call.input_leaves[0]
    if x.ndim != 3 or x.shape[2] != cell.input_dim or numpy_dtype(x.dtype) != dtype:
        return None
    states = call.initial_states
    if not isinstance(states, (list, tuple)) or len(states) != cell.n_states:
        return None
    for s in states:  # the container's items themselves, so [[h]] is not taken for [h]
        if not hasattr(s, "shape") or not hasattr(s, "dtype"):
            return None
        if tuple(s.shape) != (call.batch_size, cell.units) or numpy_dtype(s.dtype) != dtype:
            return None
    library = _library(cell.kernel)
    if not all(_library(a) == library for a in [x, *call.state_leaves]):
        return None
    return cell


def cell_kernel_options(call) -> dict:
    """The keyword arguments every fused cell kernel takes from the call."""
    return dict(go_backwards=call.go_backwards, zero_output_for_mask=call.zero_output_for_mask,
                return_all_outputs=call.return_all_outputs, time_major=call.time_major)
