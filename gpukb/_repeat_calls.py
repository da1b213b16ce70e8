"""Repeated cell calls: the checks and plan of an ``rnn`` call reused for the next call of the
same cell whose arguments have the same structure.

A server scores request after request with one cell; every call's arguments differ only in
their values. Checking a call (``gpukb._rnn.prepare``), casting it to the cell's dtype and
planning it depend only on the arguments' types, shapes, dtypes and flags and on the cell, never
on an array's values; on the development machine they took about 100 of the 230 us that a
one-step ``gpukb.rnn`` call cost (onnxruntime's whole call: about 20 us). So a backend that
plans from those alone (the cpu backend) keeps, per cell, the checked call and its plan under
``key``, and a later call with the same key gets them back with its own arrays in place
(``lookup``): the same plan, run on the same kinds of arrays, as the full path would give.

Only plain calls take this path (``key`` is None otherwise): one NumPy array as inputs, a list
or tuple of NumPy arrays as initial states, every array already in the cell's dtype (so the
cast changes nothing), the cell's weights NumPy arrays (so ``Cell.converted`` is the cell), no
constants, no ``input_length``, a mask that is None or a NumPy array (its shape and dtype are
part of the key; its values are read, and checked, at every call), and every flag a plain bool.
Anything else takes the full path, with its checks and errors, every time.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy

from .cells import Cell

# Distinct argument structures kept per cell: a server sees a few batch sizes and lengths; past
# this many the cell's entries are dropped and collected again.
MAX_KEYS_PER_CELL = 64

_FLAGS = ("go_backwards", "unroll", "time_major", "zero_output_for_mask", "return_all_outputs")
_ABSENT = ("constants", "input_length")


def key(cell: Any, inputs: Any, initial_states: Any, options: dict) -> tuple | None:
    """The structure of a plain cell call (see the module docstring), or None for any other."""
    if not isinstance(cell, Cell) or type(inputs) is not numpy.ndarray:
        return None
    container = type(initial_states)
    if container is not list and container is not tuple:
        return None
    for name in _ABSENT:
        if options.get(name) is not None:
            return None
    mask = options.get("mask")
    if mask is not None and type(mask) is not numpy.ndarray:
        return None
    flags = tuple(options.get(name) for name in _FLAGS)
    if any(type(flag) is not bool for flag in flags):
        return None
    kernel, recurrent_kernel, bias = cell.kernel, cell.recurrent_kernel, cell.bias
    if (type(kernel) is not numpy.ndarray or type(recurrent_kernel) is not numpy.ndarray
            or (bias is not None and type(bias) is not numpy.ndarray)):
        return None
    dtype = kernel.dtype
    if inputs.dtype != dtype:
        return None
    states = []
    for state in initial_states:
        if type(state) is not numpy.ndarray or state.dtype != dtype:
            return None
        states.append(state.shape)
    # The weights' identities: a cell that is not frozen may get new weights (of new shapes).
    weights = (id(kernel), kernel.shape, id(recurrent_kernel), recurrent_kernel.shape,
               id(bias), None if bias is None else bias.shape)
    masking = None if mask is None else (mask.shape, mask.dtype)
    return (inputs.shape, dtype, container, tuple(states), flags, weights, masking)


def lookup(cell: Cell, call_key: tuple, inputs: Any, initial_states: Any,
           mask: Any = None) -> tuple | None:
    """``(plan, call)`` for this call when a call of the same key was planned before, its
    ``RnnCall`` holding this call's arrays (and its mask as steps, ``_rnn``'s reading); else
    None."""
    known = cell.__dict__.get("_repeat_calls")
    entry = None if known is None else known.get(call_key)
    if entry is None:
        return None
    plan, template, _ = entry
    # dataclasses.replace, without its per-call introspection (a quarter of this path's time):
    # the template's fields, this call's arrays.
    call = object.__new__(type(template))
    fields = call.__dict__
    fields.update(template.__dict__)
    fields.update(input_leaves=[inputs], initial_states=initial_states,
                  state_leaves=list(initial_states))
    if mask is not None:
        from ._rnn.validation import _mask_to_steps

        fields["step_mask"] = _mask_to_steps(mask, numpy, template.batch_size,
                                             template.time_steps, template.time_major)
    return plan, call


def runner(cell: Cell, call_key: tuple) -> tuple | None:
    """``(plan, template, run)`` when ``store`` kept a ``run`` for this key: ``run(inputs,
    initial_states, mask)`` gives the call's result directly (the backend's shortest path for
    a repeated call: no RnnCall is made); else None. ``template`` is the planned call without
    its arrays (its sizes and flags are this call's)."""
    known = cell.__dict__.get("_repeat_calls")
    entry = None if known is None else known.get(call_key)
    return None if entry is None or entry[2] is None else entry


def store(cell: Cell, call_key: tuple, plan: Any, call: Any, run: Any = None) -> None:
    """Keep ``(plan, call)`` for later calls of ``call_key`` on ``cell``, and ``run`` (or None)
    for ``runner``."""
    known = cell.__dict__.get("_repeat_calls")
    if known is None or len(known) >= MAX_KEYS_PER_CELL:
        known = {}
        object.__setattr__(cell, "_repeat_calls", known)   # a frozen cell refuses only weights
    # The arrays are dropped: the template must not keep a caller's inputs alive.
    known[call_key] = (plan, dataclasses.replace(call, input_leaves=[], initial_states=None,
                                                 state_leaves=[], step_mask=None), run)
