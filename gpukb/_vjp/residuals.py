"""Residuals: what a vjp's pullback needs beyond the call's arguments, as a flat tuple of arrays,
so that a caller that keeps them (the PyTorch drop-in saves them for its backward) gets the
pullback later without running the forward again (docs/semantics.md, "Gradients").

A backend says per vjp plan what its backward keeps (``Backend.vjp_residuals``: the specs and how
to rebuild). The fused cell paths keep arrays (cpu: every step's output and the kept
pre-activations, ``fused_cpu``; cuda: every step's output, ``_cuda_vjp``); a plan that keeps
none (the generic path, a plugin backend without the hook) has the residuals ``()``, and its
rebuilt pullback runs the vjp's forward again: the same computation, so the same gradients.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .._rnn import RnnCall
from .pullback import Pullback


def specs_of(backend: Any, plan: Any, call: RnnCall) -> tuple:
    """The ``(shape, dtype)`` of each residual of ``call`` run as vjp ``plan``."""
    hook = backend.vjp_residuals(plan, call)
    return () if hook is None else tuple((tuple(s), np.dtype(d)) for s, d in hook[0])


def residuals_of(backend: Any, plan: Any, call: RnnCall, pullback: Pullback) -> tuple:
    """The residuals of a pullback ``run_vjp_plan`` just built, as ``specs_of`` lists them."""
    specs = specs_of(backend, plan, call)
    if not specs:
        return ()
    kept = tuple(pullback.residuals or ())
    if [(tuple(r.shape), r.dtype) for r in kept] != list(specs):   # a backend's bug, not the user's
        raise RuntimeError(
            f"rnn_vjp: backend {backend.name!r} kept residuals {_describe(kept)} but its "
            f"vjp_residuals lists {list(specs)}."
        )
    return kept


def rebuild(backend: Any, plan: Any, call: RnnCall, given: tuple, residuals: Any) -> Pullback:
    """The pullback of ``call`` from its residuals, checked first (count, library, shape, dtype)."""
    hook = backend.vjp_residuals(plan, call)
    specs = specs_of(backend, plan, call)
    arrays = check_residuals(residuals, specs, call)
    if hook is None:   # nothing kept: the pullback is the vjp's own, forward run again
        return backend.run_vjp_plan(plan, call, given)[1]
    result, backward = hook[1](arrays)
    return Pullback(call, result, backward, given)


def check_residuals(residuals: Any, specs: tuple, call: RnnCall) -> tuple:
    """``residuals`` as a tuple, or a TypeError/ValueError naming what differs from ``specs``."""
    if not isinstance(residuals, (list, tuple)):
        raise TypeError(
            "rnn_pullback: residuals must be the tuple rnn_vjp(..., return_residuals=True) "
            f"returned, got {type(residuals).__name__}."
        )
    if len(residuals) != len(specs):
        raise ValueError(
            f"rnn_pullback: residuals has {len(residuals)} array(s) but this call keeps "
            f"{len(specs)} ({list(specs)}, gpukb.rnn_residual_specs); were they made by "
            "rnn_vjp with the same arguments and backend?"
        )
    library = _library(call.input_leaves[0]) if call.input_leaves else "numpy"
    for index, (array, (shape, dtype)) in enumerate(zip(residuals, specs)):
        where = f"residuals[{index}]"
        if not (hasattr(array, "shape") and hasattr(array, "dtype")):
            raise TypeError(f"rnn_pullback: {where} must be an array, got "
                            f"{type(array).__name__}.")
        if _library(array) != library:
            raise TypeError(
                f"rnn_pullback: {where} is a {type(array).__module__}.{type(array).__name__} but "
                f"the call's arrays are {library} arrays."
            )
        if tuple(array.shape) != shape:
            raise ValueError(f"rnn_pullback: {where} must have shape {shape}, got "
                             f"{tuple(array.shape)}.")
        if array.dtype != dtype:
            raise ValueError(f"rnn_pullback: {where} must have dtype {dtype}, got {array.dtype}.")
    return tuple(residuals)


def _library(x: Any) -> str:
    return type(x).__module__.split(".")[0]


def _describe(arrays: tuple) -> str:
    return str([(tuple(a.shape), a.dtype) for a in arrays])
