"""The generic rnn loop: runs any Python step function over an ``RnnCall``.

The loop touches arrays only through this subset of the namespace ``xp``, so NumPy, CuPy and thin
adapters (torch) can all run it: ``xp.zeros(shape, dtype=)``, ``xp.empty(shape, dtype=)``,
``xp.where(cond, a, b)``, and on arrays ``.shape``, ``.dtype``, ``.ndim``, ``.reshape``, basic
indexing ``a[t]`` / ``a[:, t]`` and slice assignment into those.

Semantics (docs/semantics.md, section "rnn"): the step is called exactly T times, outputs go into a
preallocated buffer in processing order, and at a masked (sample, step) the states keep their
previous value and the output is zeros or the previous masked output (zeros before the first step).
``unroll`` is only a hint: both modes run this same loop, so results are bitwise identical.
"""

from __future__ import annotations

from typing import Any

import optree

from .._dtypes import dtype_kind
from .validation import RnnCall, format_path

# Starts the note added to an exception raised by step_function (how a second loop recognises it).
_NOTE_START = "gpukb.rnn: raised by step_function at processing step"


def _paths(tree) -> list:
    return optree.tree_paths(tree)


def check_new_states(call: RnnCall, new_states: Any, accepted: set) -> list:
    """The leaves of ``new_states`` after checking them against ``initial_states``.

    List and tuple (and namedtuple) containers count as the same structure, as in tf.keras; a
    bare array stands for a one-state list. ``accepted`` caches the treespecs already checked.
    """
    if not isinstance(new_states, (list, tuple)):
        new_states = (new_states,)
    leaves, treespec = optree.tree_flatten(new_states)
    if treespec not in accepted:
        given = call.initial_states
        if len(new_states) != len(given):
            raise ValueError(
                f"rnn: step_function returned {len(new_states)} new state(s) but initial_states has "
                f"{len(given)}; it must return states with the structure of initial_states."
            )
        for index, (new, old) in enumerate(zip(new_states, given)):
            if _paths(new) != _paths(old):
                raise ValueError(
                    f"rnn: step_function returned new state {index} with structure "
                    f"{optree.tree_structure(new)}, but initial_states[{index}] has structure "
                    f"{optree.tree_structure(old)}."
                )
        accepted.add(treespec)
    for name, new, old in zip(call.state_paths, leaves, call.state_leaves):
        if not (hasattr(new, "shape") and hasattr(new, "dtype")):
            raise ValueError(f"rnn: step_function returned a non-array {type(new).__name__} for state {name}.")
        if tuple(new.shape) != tuple(old.shape):
            raise ValueError(
                f"rnn: step_function changed the shape of state {name}: initial shape "
                f"{tuple(old.shape)}, returned {tuple(new.shape)}."
            )
        if new.dtype != old.dtype:
            raise ValueError(
                f"rnn: step_function changed the dtype of state {name}: initial dtype {old.dtype}, "
                f"returned {new.dtype}." + _integer_arguments_hint(call, old.dtype)
            )
    return leaves


def _integer_arguments_hint(call: RnnCall, state_dtype: Any) -> str:
    """The likely cause of a floating state changing dtype: an integer or bool input or constant
    (NumPy computes float32 with int32 or int64 in float64)."""
    if dtype_kind(state_dtype) != "f":
        return ""
    constants: Any = call.constants  # optree's PyTree hint rejects a tuple[Any, ...]
    const_paths, const_leaves, _ = optree.tree_flatten_with_path(constants)
    named = list(zip(call.input_paths, call.input_leaves))
    named += [(format_path("constants", p), leaf) for p, leaf in zip(const_paths, const_leaves)]
    culprits = [f"{name} has dtype {leaf.dtype}" for name, leaf in named
                if hasattr(leaf, "dtype") and dtype_kind(leaf.dtype) in "biu"]
    if not culprits:
        return ""
    return (f" The likely cause: {', '.join(culprits)}; cast integer and bool inputs and constants "
            f"to {state_dtype} before calling rnn.")


def check_step_output(call: RnnCall, output: Any, first: tuple | None) -> tuple:
    """``(leaves, treespec, paths)`` of a step output; ``first`` is that of step 0 (or None).

    Every output leaf needs the batch as its first axis (it is stacked and masked per sample), and
    later steps must return the structure, shapes and dtypes of the first.
    """
    paths, leaves, treespec = optree.tree_flatten_with_path(output)
    names = [format_path("output", p) for p in paths]
    if first is None:
        if not leaves:
            raise ValueError(f"rnn: step_function returned an output with no arrays ({output!r}).")
        for name, leaf in zip(names, leaves):
            if not (hasattr(leaf, "shape") and hasattr(leaf, "dtype") and hasattr(leaf, "ndim")):
                raise ValueError(f"rnn: step_function returned a non-array {type(leaf).__name__} as {name}.")
            if leaf.ndim < 1 or leaf.shape[0] != call.batch_size:
                raise ValueError(
                    f"rnn: step_function's {name} must have the batch size B={call.batch_size} as "
                    f"its first axis, got shape {tuple(leaf.shape)}."
                )
        return leaves, treespec, paths
    first_leaves, first_treespec, first_paths = first
    if treespec != first_treespec and paths != first_paths:
        raise ValueError(
            f"rnn: step_function returned an output with structure {treespec}, but its first step "
            f"returned {first_treespec}."
        )
    for name, leaf, ref in zip(names, leaves, first_leaves):
        if not hasattr(leaf, "shape") or tuple(leaf.shape) != tuple(ref.shape) or leaf.dtype != ref.dtype:
            seen = (tuple(leaf.shape), leaf.dtype) if hasattr(leaf, "shape") else type(leaf).__name__
            raise ValueError(
                f"rnn: step_function's {name} changed from shape/dtype "
                f"{(tuple(ref.shape), ref.dtype)} at the first step to {seen}."
            )
    return leaves, treespec, paths


class WhereMasker:
    """Masking of one step, the default: one rank-matched ``where`` per output and state leaf.

    A backend can pass ``run_generic`` another masker with the same constructor and ``step``
    (the cuda backend fuses all leaves into one kernel); the loop around it stays this one.
    """

    def __init__(self, call: RnnCall, out_leaves: list, buffers: list):
        self.call = call
        # The "previous output" before the first step is zeros, not initial_states[0].
        self.zeros = [call.xp.zeros(tuple(leaf.shape), dtype=leaf.dtype) for leaf in out_leaves]
        self.prev = self.zeros
        self.buffers = buffers

    def step(self, t: int, slot: int, write: bool, out_leaves: list, new_leaves: list,
             states: list) -> list:
        """Mask step ``t``: store the masked outputs at ``slot`` when ``write``; return the states."""
        xp, call = self.call.xp, self.call
        valid = call.step_mask[t]
        by_rank = {}

        def keep(ndim):  # the (B,) mask reshaped to (B, 1, ..., 1) to match a leaf's rank
            if ndim not in by_rank:
                by_rank[ndim] = valid.reshape((call.batch_size,) + (1,) * (ndim - 1))
            return by_rank[ndim]

        fallback = self.zeros if call.zero_output_for_mask else self.prev
        self.prev = [xp.where(keep(o.ndim), o, f) for o, f in zip(out_leaves, fallback)]
        if write:
            store_outputs(call, self.buffers, slot, self.prev)
        return [xp.where(keep(n.ndim), n, s) for n, s in zip(new_leaves, states)]


def output_buffers(call: RnnCall, out_leaves: list) -> list:
    """Empty output buffers shaped from the first step's output leaves: no list-then-stack."""
    out_steps = call.time_steps if call.return_all_outputs else 1
    buffers = []
    for leaf in out_leaves:
        rest = tuple(leaf.shape[1:])
        batch = call.batch_size
        shape = (out_steps, batch) + rest if call.time_major else (batch, out_steps) + rest
        buffers.append(call.xp.empty(shape, dtype=leaf.dtype))
    return buffers


def store_outputs(call: RnnCall, buffers: list, slot: int, out_leaves: list) -> None:
    for buf, leaf in zip(buffers, out_leaves):
        if call.time_major:
            buf[slot] = leaf
        else:
            buf[:, slot] = leaf


def run_generic(call: RnnCall, masker=WhereMasker):
    """Run the loop; return ``(last_output, outputs, new_states)`` as the spec describes.

    ``masker`` builds the object that masks each step when there is a mask (see WhereMasker).
    """
    steps = call.time_steps
    states = list(call.state_leaves)
    accepted: set = set()
    first: tuple | None = None
    buffers: list = []  # made at the first step, from its outputs
    masking = None

    for i in range(steps):
        t = call.original_time(i)
        output, new_states = _call_step(call, i, t, states)
        out_leaves, _, _ = current = check_step_output(call, output, first)
        new_leaves = check_new_states(call, new_states, accepted)

        if first is None:
            first = current
            buffers = output_buffers(call, out_leaves)
            if call.step_mask is not None:
                masking = masker(call, out_leaves, buffers)

        slot = i if call.return_all_outputs else 0
        write = call.return_all_outputs or i == steps - 1
        if masking is None:
            if write:
                store_outputs(call, buffers, slot, out_leaves)
            states = new_leaves
        else:
            states = masking.step(t, slot, write, out_leaves, new_leaves, states)

    assert first is not None  # prepare() rejects T == 0
    treespec = first[1]
    outputs = optree.tree_unflatten(treespec, buffers)
    last = [buf[-1] if call.time_major else buf[:, -1] for buf in buffers]
    last_output = optree.tree_unflatten(treespec, last)
    return last_output, outputs, call.pack_states(states)


def _call_step(call: RnnCall, i: int, t: int, states: list):
    try:
        result = call.step_function(call.step_input(t), call.step_states(states))
    except Exception as error:  # not BaseException: KeyboardInterrupt and SystemExit pass as they are
        note_step_error(error, call, i, t)
        raise  # the same object, traceback intact
    if not isinstance(result, (list, tuple)) or len(result) != 2:
        raise TypeError(
            "rnn: step_function must return a pair (output, new_states), got "
            f"{type(result).__name__}" + (f" of length {len(result)}." if isinstance(result, (list, tuple)) else ".")
        )
    return result


def note_step_error(error: BaseException, call: RnnCall, i: int, t: int) -> None:
    """Add a note (PEP 678) to ``error``, raised by step_function at processing step ``i`` (input
    time ``t``): where in the loop and on which backend. Once per exception, however many loops
    it passes (a step that runs rnn itself); nothing on Python 3.10, which has no notes."""
    if not hasattr(error, "add_note"):
        return
    if any(str(note).startswith(_NOTE_START) for note in getattr(error, "__notes__", ())):
        return
    where = f" on backend {call.backend!r}" if call.backend else ""
    error.add_note(
        f"{_NOTE_START} i={i} of T={call.time_steps} (input time index t={t}"
        f"{', go_backwards' if call.go_backwards else ''}){where}."
    )
