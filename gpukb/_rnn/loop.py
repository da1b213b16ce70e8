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

import operator
from typing import Any, Callable

import numpy
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
    if treespec not in accepted and not _flat_match(call, new_states, treespec):
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


def _flat_match(call: RnnCall, new_states: Any, treespec: Any) -> bool:
    """Whether ``new_states`` (a list or tuple) has the structure of flat ``initial_states``
    without comparing paths: as many children, each a leaf (one node and one leaf per child)."""
    count = len(call.state_leaves)
    return (len(new_states) == count and treespec.num_leaves == count
            and treespec.num_nodes == count + 1 and _flat_states(call))


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
    if first is None:
        if not leaves:
            raise ValueError(f"rnn: step_function returned an output with no arrays ({output!r}).")
        for path, leaf in zip(paths, leaves):
            if not (hasattr(leaf, "shape") and hasattr(leaf, "dtype") and hasattr(leaf, "ndim")):
                name = format_path("output", path)
                raise ValueError(f"rnn: step_function returned a non-array {type(leaf).__name__} as {name}.")
            if leaf.ndim < 1 or leaf.shape[0] != call.batch_size:
                name = format_path("output", path)
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
    for path, leaf, ref in zip(paths, leaves, first_leaves):
        if not hasattr(leaf, "shape") or tuple(leaf.shape) != tuple(ref.shape) or leaf.dtype != ref.dtype:
            name = format_path("output", path)
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
        xp = call.xp
        self.call = call
        self.where = xp.where
        self.zero_output = call.zero_output_for_mask
        # The "previous output" before the first step is zeros, not initial_states[0].
        self.zeros = [xp.zeros(tuple(leaf.shape), dtype=leaf.dtype) for leaf in out_leaves]
        self.prev = self.zeros
        self.buffers = buffers
        self.store: Any = time_writer(call, buffers[0]) if len(buffers) == 1 else None
        # The (T, B) mask reshaped once per leaf rank to (T, B, 1, ..., 1): step t's mask for a
        # leaf is then one index. Every step returns the first step's ranks (checked), so the
        # ranks of the first outputs and of the initial states hold for the whole loop.
        by_rank: dict = {}
        for leaf in list(out_leaves) + list(call.state_leaves):
            if leaf.ndim not in by_rank:
                steps, batch = call.time_steps, call.batch_size
                by_rank[leaf.ndim] = call.step_mask.reshape((steps, batch) + (1,) * (leaf.ndim - 1))
        self.out_masks = [by_rank[leaf.ndim] for leaf in out_leaves]
        self.state_masks = [by_rank[leaf.ndim] for leaf in call.state_leaves]
        # One output and at most one state of the same rank (the usual case): one mask per step.
        self.shared = None
        if len(out_leaves) == 1 and len(by_rank) == 1 and len(self.state_masks) <= 1:
            self.shared = self.out_masks[0]
        # NumPy: the previous output never leaves the loop (it is copied into the buffers), so it
        # can be updated in place, cheaper than a new ``where``. The states are always new arrays:
        # the step may keep the ones it was given.
        self.in_place = xp is numpy and not self.zero_output
        if self.in_place:
            self.prev = [numpy.zeros_like(zeros) for zeros in self.zeros]

    def step(self, t: int, slot: int, write: bool, out_leaves: list, new_leaves: list,
             states: list) -> list:
        """Mask step ``t``: store the masked outputs at ``slot`` when ``write``; return the states."""
        where = self.where
        if self.shared is not None:
            keep = self.shared[t]
            if self.in_place:
                prev = self.prev[0]
                numpy.copyto(prev, out_leaves[0], where=keep)
            else:
                prev = where(keep, out_leaves[0], self.zeros[0] if self.zero_output else self.prev[0])
                self.prev = [prev]
            if write:
                self.store(slot, prev)
            return [where(keep, new_leaves[0], states[0])] if states else []
        if self.in_place:
            for m, o, p in zip(self.out_masks, out_leaves, self.prev):
                numpy.copyto(p, o, where=m[t])
        else:
            fallback = self.zeros if self.zero_output else self.prev
            self.prev = [where(m[t], o, f) for m, o, f in zip(self.out_masks, out_leaves, fallback)]
        if write:
            store_outputs(self.call, self.buffers, slot, self.prev)
        return [where(m[t], n, s) for m, n, s in zip(self.state_masks, new_leaves, states)]


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

    The first step is checked in full and fixes the structure, shapes and dtypes that every later
    step must return; later steps are compared with it quickly (``fast_checks``) and take the full
    checks only when that comparison fails, so their errors are exactly the full checks' errors.
    """
    steps = call.time_steps
    accepted: set = set()
    t = call.original_time(0)
    read_input, pack_states = step_arguments(call)
    output, new_states = _call_step(call, 0, t, list(call.state_leaves), read_input, pack_states)
    first = check_step_output(call, output, None)
    out_leaves = first[0]
    new_leaves = check_new_states(call, new_states, accepted)
    buffers = output_buffers(call, out_leaves)
    masking = None if call.step_mask is None else masker(call, out_leaves, buffers)
    all_outputs = call.return_all_outputs
    write_all = all_outputs or steps == 1
    if masking is None:
        if write_all:
            store_outputs(call, buffers, 0, out_leaves)
        states = new_leaves
    else:
        states = masking.step(t, 0, write_all, out_leaves, new_leaves, list(call.state_leaves))

    check_result = fast_checks(call, first, new_leaves, accepted)
    step_function = call.step_function
    backwards, last_step = call.go_backwards, steps - 1
    # One output array: stored at its time index without store_outputs' loop.
    store_single = time_writer(call, buffers[0]) if len(buffers) == 1 else None
    if (masking is None and all_outputs and store_single is not None and steps > 1
            and first[1].is_leaf() and len(new_leaves) == 1 and _flat_states(call)):
        states = _one_array_loop(call, read_input, store_single, check_result, out_leaves[0],
                                 new_leaves[0])
        steps = 1  # done: the general loop below runs no step
    for i in range(1, steps):
        t = last_step - i if backwards else i
        try:
            result = step_function(read_input(t), pack_states(states))
        except Exception as error:  # not BaseException: KeyboardInterrupt and SystemExit pass as they are
            note_step_error(error, call, i, t)
            raise  # the same object, traceback intact
        out_leaves, new_leaves = check_result(result)
        if masking is not None:
            write = all_outputs or i == last_step
            states = masking.step(t, i if all_outputs else 0, write, out_leaves, new_leaves, states)
            continue
        if all_outputs or i == last_step:
            slot = i if all_outputs else 0
            if store_single is not None:
                store_single(slot, out_leaves[0])
            else:
                store_outputs(call, buffers, slot, out_leaves)
        states = new_leaves

    treespec = first[1]
    outputs = optree.tree_unflatten(treespec, buffers)
    last = [buf[-1] if call.time_major else buf[:, -1] for buf in buffers]
    last_output = optree.tree_unflatten(treespec, last)
    return last_output, outputs, call.pack_states(states)


def _one_array_loop(call: RnnCall, read_input: Callable, store: Callable, check_result: Callable,
                    first_output: Any, first_state: Any) -> list:
    """Steps 1 to T-1 of the commonest call: one output array, one state, no mask, every output
    kept. What ``fast_checks``' ``check_result`` accepts at once is checked inline here (a call
    and two lists fewer per step); anything else goes through ``check_result`` itself, so the
    errors and results are the general loop's. Returns the final states."""
    step_function, constants = call.step_function, call.constants
    out_kind, out_shape, out_dtype = type(first_output), tuple(first_output.shape), first_output.dtype
    old = call.state_leaves[0]
    kind, shape, dtype = type(first_state), tuple(old.shape), old.dtype
    same_refs = (kind, shape, dtype) == (out_kind, out_shape, out_dtype)
    backwards, last_step = call.go_backwards, call.time_steps - 1
    state = first_state
    for i in range(1, call.time_steps):
        t = last_step - i if backwards else i
        try:
            result = step_function(read_input(t), (state,) + constants if constants else (state,))
        except Exception as error:  # not BaseException: KeyboardInterrupt and SystemExit pass as they are
            note_step_error(error, call, i, t)
            raise  # the same object, traceback intact
        if type(result) is tuple and len(result) == 2:
            output, new = result
            if (type(output) is out_kind and output.shape == out_shape and output.dtype == out_dtype
                    and (type(new) is list or type(new) is tuple) and len(new) == 1):
                leaf = new[0]
                if (leaf is output and same_refs) or (
                        type(leaf) is kind and leaf.shape == shape and leaf.dtype == dtype):
                    store(i, output)
                    state = leaf
                    continue
        out_leaves, new_leaves = check_result(result)
        store(i, out_leaves[0])
        state = new_leaves[0]
    return [state]


def _time_first(call: RnnCall, array: Any):
    """``array`` as a view indexed by time first (NumPy only: ``a.swapaxes(0, 1)[t]`` is the
    view ``a[:, t]``, with an index cheaper than ``[:, t]``); None when that is not available."""
    if call.time_major:
        return array
    if type(array) is numpy.ndarray:
        return array.swapaxes(0, 1)
    return None


def time_reader(call: RnnCall, array: Any):
    """``t -> array[:, t]`` (``array[t]`` with ``time_major``)."""
    by_time = _time_first(call, array)
    if by_time is not None:
        return by_time.__getitem__

    def read(t):
        return array[:, t]
    return read


def time_writer(call: RnnCall, array: Any):
    """``(t, value) -> None``: ``array[:, t] = value`` (``array[t] = value`` with ``time_major``)."""
    by_time = _time_first(call, array)
    if by_time is not None:
        return by_time.__setitem__

    def write(t, value):
        array[:, t] = value
    return write


def _flat_states(call: RnnCall) -> bool:
    """Whether ``initial_states`` is a list or tuple of arrays (no nesting): then its structure is
    that of any list or tuple of as many arrays."""
    initial, leaves = call.initial_states, call.state_leaves
    return len(initial) == len(leaves) and all(item is leaf for item, leaf in zip(initial, leaves))


def step_arguments(call: RnnCall) -> tuple:
    """``(read_input, pack_states)``: ``t -> step input`` and ``state leaves -> states tuple``,
    the same values as ``call.step_input`` and ``call.step_states``, without optree when the
    inputs are one array and the states a flat list or tuple of arrays."""
    read_input: Callable[[int], Any] = call.step_input
    pack_states: Callable[[Any], tuple] = call.step_states
    if call.input_treespec.is_leaf():
        read_input = time_reader(call, call.input_leaves[0])
    if _flat_states(call):  # tuple(pack_states(leaves)) is then tuple(leaves), whatever the container
        constants = call.constants
        if constants:
            def pack_states(leaves):
                return tuple(leaves) + constants
        else:
            pack_states = tuple
    return read_input, pack_states


def fast_checks(call: RnnCall, first: tuple, first_states: list, accepted: set):
    """``result -> (output leaves, new state leaves)`` for the steps after the first: checks the
    pair a step returned as ``_call_step``, ``check_step_output(call, output, first)`` and
    ``check_new_states(call, new_states, accepted)`` do, and calls those whenever what the step
    returned differs in any way from the first step's (so they raise the error).

    A leaf passes the quick check when it has the type of the first step's leaf at its place (a
    type optree flattens as a leaf) and the shape and dtype the full check requires. One leaf is
    checked directly; several with ``map`` (a Python loop over them costs more than the step)."""
    first_leaves, first_treespec, _ = first
    flatten = optree.tree_flatten

    if first_treespec.is_leaf():
        out_kind, out_shape, out_dtype = type(first_leaves[0]), tuple(first_leaves[0].shape), first_leaves[0].dtype

        def check_output(output):
            if type(output) is out_kind and output.shape == out_shape and output.dtype == out_dtype:
                return [output]
            return check_step_output(call, output, first)[0]
    else:
        out_same = _same_leaves([type(leaf) for leaf in first_leaves],
                                [tuple(leaf.shape) for leaf in first_leaves],
                                [leaf.dtype for leaf in first_leaves])

        def check_output(output):
            leaves, treespec = flatten(output)
            if treespec == first_treespec and out_same(leaves):
                return leaves
            return check_step_output(call, output, first)[0]

    flat = _flat_states(call)
    if not flat:
        def check_states(new_states):
            return check_new_states(call, new_states, accepted)
    elif len(first_states) == 1:
        kind, shape, dtype = type(first_states[0]), tuple(call.state_leaves[0].shape), call.state_leaves[0].dtype

        def check_states(new_states):
            if type(new_states) is list or type(new_states) is tuple:
                if len(new_states) == 1:
                    leaf = new_states[0]
                    if type(leaf) is kind and leaf.shape == shape and leaf.dtype == dtype:
                        return [leaf]
            elif type(new_states) is kind:  # one state returned as a bare array
                if new_states.shape == shape and new_states.dtype == dtype:
                    return [new_states]
            return check_new_states(call, new_states, accepted)
    else:
        count = len(first_states)
        states_same = _same_leaves([type(new) for new in first_states],
                                   [tuple(old.shape) for old in call.state_leaves],
                                   [old.dtype for old in call.state_leaves])

        def check_states(new_states):  # flat states: any list or tuple of as many arrays fits
            if type(new_states) is list or type(new_states) is tuple:
                if len(new_states) == count and states_same(new_states):
                    return list(new_states)  # a copy: the step may reuse its list
            return check_new_states(call, new_states, accepted)

    composed = _composed(check_output, check_states)
    if first_treespec.is_leaf() and flat and len(first_states) == 1:
        # The common case, one output array and one state, checked without further calls.
        same_refs = (kind, shape, dtype) == (out_kind, out_shape, out_dtype)
        def check_result(result) -> tuple:
            if type(result) is tuple and len(result) == 2:
                output, new_states = result
                if type(output) is out_kind and output.shape == out_shape and output.dtype == out_dtype:
                    if type(new_states) is list or type(new_states) is tuple:
                        if len(new_states) == 1:
                            leaf = new_states[0]
                            if leaf is output and same_refs:  # ``return h, [h]``: checked above
                                return [output], [leaf]
                            if type(leaf) is kind and leaf.shape == shape and leaf.dtype == dtype:
                                return [output], [leaf]
                    elif type(new_states) is kind and new_states.shape == shape and new_states.dtype == dtype:
                        return [output], [new_states]
            return composed(result)
        return check_result
    return composed


def _composed(check_output, check_states):
    """``check_result`` from the output and state checks."""
    def check_result(result) -> tuple:
        if type(result) is not tuple or len(result) != 2:
            if not (isinstance(result, (list, tuple)) and len(result) == 2):
                _raise_not_a_pair(result)
        output, new_states = result
        return check_output(output), check_states(new_states)
    return check_result


def _same_leaves(kinds: list, shapes: list, dtypes: list):
    """``leaves -> bool``: whether the leaves have these types, shapes and dtypes, in order."""
    get_shape, get_dtype = operator.attrgetter("shape"), operator.attrgetter("dtype")
    kinds, dtypes = list(kinds), list(dtypes)

    def same(leaves) -> bool:
        return (list(map(type, leaves)) == kinds and list(map(get_shape, leaves)) == shapes
                and list(map(get_dtype, leaves)) == dtypes)
    return same


def _raise_not_a_pair(result) -> None:
    raise TypeError(
        "rnn: step_function must return a pair (output, new_states), got "
        f"{type(result).__name__}" + (f" of length {len(result)}." if isinstance(result, (list, tuple)) else ".")
    )


def _call_step(call: RnnCall, i: int, t: int, states: list, read_input=None, pack_states=None):
    """The pair step ``i`` (input time ``t``) returns; ``read_input``/``pack_states``: those of
    ``step_arguments`` (default: ``call.step_input`` and ``call.step_states``)."""
    read_input = read_input or call.step_input
    pack_states = pack_states or call.step_states
    try:
        result = call.step_function(read_input(t), pack_states(states))
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
