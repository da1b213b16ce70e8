"""What the fused cell vjps (the cpu backend's ``fused_cpu``, the cuda backend's ``_cuda_vjp``)
share around their kernels, on any array library ``xp``: the kernels' gradient dict turned into
``Grads``, and (for the cuda kernels; the cpu ones read ``d_outputs`` in place) the output
cotangents gathered into one ``(T, B, H)`` buffer in processing order.
"""

from __future__ import annotations

from typing import Any

import optree

from .cotangents import Grads, differentiable


def step_cotangents(xp: Any, call: Any, d_out: list, d_last: list, dtype: Any) -> Any:
    """The cotangent of every processed step's output, ``(T, B, H)`` in processing order (the
    loop's outputs are in processing order already): ``d_outputs``' slots (only the last step's
    without ``return_all_outputs``), plus ``d_last_output`` at the last step."""
    cell = call.step_function
    time_major = call.time_major
    gy = xp.zeros((call.time_steps, call.batch_size, cell.units), dtype=dtype)
    if call.return_all_outputs:
        gy[...] = d_out[0] if time_major else xp.swapaxes(d_out[0], 0, 1)
    else:
        gy[-1] = d_out[0][0] if time_major else d_out[0][:, 0]
    gy[-1] += d_last[0]
    return gy


def cell_grads(xp: Any, call: Any, grads: dict) -> Grads:
    """``Grads`` from a fused backward's dict (``inputs``, ``states``, ``kernel``,
    ``recurrent_kernel``, ``bias``): a cell's step takes no constants, so theirs are zeros."""
    cell = call.step_function
    weights = {"kernel": grads["kernel"], "recurrent_kernel": grads["recurrent_kernel"]}
    if cell.bias is not None:
        weights["bias"] = grads["bias"]
    constants: Any = call.constants
    leaves, treespec = optree.tree_flatten(constants)
    d_constants = [xp.zeros_like(c) if differentiable(c) else None for c in leaves]
    return Grads(inputs=grads["inputs"], initial_states=call.pack_states(grads["states"]),
                 constants=optree.tree_unflatten(treespec, d_constants) if constants else None,
                 weights=weights)


def result_like(call: Any, every: Any) -> tuple:
    """Arrays with the shapes, dtypes and structure of ``rnn``'s result, from every step's output
    (``every``, the layout of ``time_major``, processing order) and the call: views, nothing
    computed. What a pullback rebuilt from residuals checks its cotangents against."""
    time_major = call.time_major
    last = every[-1] if time_major else every[:, -1]
    outputs = every
    if not call.return_all_outputs:
        outputs = every[-1:] if time_major else every[:, -1:]
    return last, outputs, call.pack_states(list(call.state_leaves))
