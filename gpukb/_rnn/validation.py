"""Argument checking and normalisation for ``rnn``: ``prepare`` builds an ``RnnCall``.

Everything that can be checked without running a step is checked here, so a bad call raises before
``step_function`` runs even once. Messages name the argument (with its pytree path) and the shapes
seen. What can only be checked on a step's result (states changing shape, ...) is in ``loop``.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any, Callable

import numpy
import optree

from .._dtypes import dtype_kind


def format_path(root: str, path: tuple) -> str:
    """``('a', 0)`` under ``'inputs'`` -> ``"inputs['a'][0]"``."""
    return root + "".join(f"[{key!r}]" for key in path)


def _library(x: Any) -> str:
    return type(x).__module__.split(".")[0]


def _is_array(x: Any) -> bool:
    return hasattr(x, "shape") and hasattr(x, "dtype") and hasattr(x, "ndim")


def _flag(name: str, value: Any) -> bool:
    if isinstance(value, (bool, numpy.bool_)) or (isinstance(value, int) and value in (0, 1)):
        return bool(value)
    raise TypeError(f"rnn: {name} must be a bool, got {type(value).__name__} {value!r}.")


@dataclass(frozen=True, eq=False)  # eq=False: fields hold arrays, which have no usable ==
class RnnCall:
    """A checked, normalised ``rnn`` problem.

    ``step_mask`` is None (every step valid) or a bool array of shape ``(T, B)`` in original time
    order, True where the step is valid; it comes from ``mask`` or else from a 1-D ``input_length``.
    """

    step_function: Callable
    input_leaves: list
    input_treespec: Any
    input_paths: tuple
    time_major: bool
    batch_size: int
    time_steps: int
    initial_states: Any
    state_leaves: list
    state_treespec: Any
    state_paths: tuple
    constants: tuple
    step_mask: Any
    go_backwards: bool
    zero_output_for_mask: bool
    return_all_outputs: bool
    unroll: bool
    xp: Any
    backend: str = ""  # the running backend's name, for the note on a step function's exception

    def original_time(self, i: int) -> int:
        """The input time index read at processing step ``i``."""
        return self.time_steps - 1 - i if self.go_backwards else i

    def step_input(self, t: int):
        """The input slice at original time ``t``, with the nesting of ``inputs``."""
        if self.time_major:
            leaves = [leaf[t] for leaf in self.input_leaves]
        else:
            leaves = [leaf[:, t] for leaf in self.input_leaves]
        return optree.tree_unflatten(self.input_treespec, leaves)

    def pack_states(self, leaves) -> Any:
        """State leaves back into the container of ``initial_states`` (list stays list, ...)."""
        return optree.tree_unflatten(self.state_treespec, list(leaves))

    def step_states(self, leaves) -> tuple:
        """The tuple the step receives: current states followed by the constants."""
        return tuple(self.pack_states(leaves)) + self.constants


# The treespec of a lone leaf (one array as ``inputs``): the same for every leaf.
_A_LEAF: Any = numpy.empty(0)
_LEAF_TREESPEC = optree.tree_structure(_A_LEAF)


def _check_inputs(inputs, time_major):
    if type(inputs) is numpy.ndarray:  # the usual case, an optree leaf: nothing to flatten
        paths, leaves, treespec = [()], [inputs], _LEAF_TREESPEC
    else:
        paths, leaves, treespec = optree.tree_flatten_with_path(inputs)
    names = tuple(format_path("inputs", p) for p in paths)
    if not leaves:
        raise ValueError(f"rnn: inputs holds no arrays (got {inputs!r}).")
    for name, leaf in zip(names, leaves):
        if not _is_array(leaf):
            raise TypeError(f"rnn: {name} must be an array, got {type(leaf).__name__}.")
        if leaf.ndim < 3:
            layout = "(T, B, ...)" if time_major else "(B, T, ...)"
            raise ValueError(
                f"rnn: {name} must have rank >= 3 {layout}, got shape {tuple(leaf.shape)}."
            )
    # T is read from the first leaf (as Keras does); every leaf must agree on B and T.
    first = tuple(leaves[0].shape)
    t_axis, b_axis = (0, 1) if time_major else (1, 0)
    batch, steps = first[b_axis], first[t_axis]
    for name, leaf in zip(names, leaves):
        shape = tuple(leaf.shape)
        if shape[b_axis] != batch or shape[t_axis] != steps:
            raise ValueError(
                f"rnn: inputs leaves must share batch size and time length: {names[0]} has shape "
                f"{first} (B={batch}, T={steps}) but {name} has shape {shape} "
                f"(B={shape[b_axis]}, T={shape[t_axis]})"
                + (" (time_major=True: shapes are (T, B, ...))." if time_major else ".")
            )
    if steps == 0:
        raise ValueError(f"rnn: inputs must have at least one time step, got T=0 ({names[0]} has shape {first}).")
    return leaves, treespec, names, int(batch), int(steps)


def _check_states(initial_states):
    if not isinstance(initial_states, (list, tuple)):
        raise TypeError(
            f"rnn: initial_states must be a list or tuple of states, got {type(initial_states).__name__}."
        )
    paths, leaves, treespec = optree.tree_flatten_with_path(initial_states)
    names = tuple(format_path("initial_states", p) for p in paths)
    for name, leaf in zip(names, leaves):
        if not _is_array(leaf):
            raise TypeError(f"rnn: {name} must be an array, got {type(leaf).__name__}.")
    return leaves, treespec, names


def _check_libraries(named_leaves):
    """One array library per call: NumPy arrays mixed with CuPy (or torch) ones is a TypeError."""
    seen = None
    for name, leaf in named_leaves:
        library = _library(leaf)
        if library == "builtins":  # Python scalars, strings, ...: not arrays of any library
            continue
        if seen is None:
            seen = (name, leaf, library)
        elif library != seen[2]:
            raise TypeError(
                f"rnn: arrays from different libraries in one call: {seen[0]} is "
                f"{type(seen[1]).__module__}.{type(seen[1]).__name__} but {name} is "
                f"{type(leaf).__module__}.{type(leaf).__name__}."
            )


def _mask_to_steps(mask, xp, batch, steps, time_major):
    """``mask`` (boolean, integer or floating) -> bool ``(T, B)``."""
    # A list is read on the host first: its dtype decides, before the array library sees it.
    dtype = mask.dtype if _is_array(mask) else numpy.asarray(mask).dtype
    if dtype_kind(dtype) not in "biuf":  # strings and objects (None) have no "nonzero = keep"
        raise TypeError(
            "rnn: mask must be a boolean, integer or floating array (or nested lists of numbers), "
            f"got dtype {dtype}."
        )
    m = xp.asarray(mask)
    shape = tuple(m.shape)
    expected = (steps, batch) if time_major else (batch, steps)
    if shape not in (expected, expected + (1,)):
        layout = "(T, B) or (T, B, 1) with time_major=True" if time_major else "(B, T) or (B, T, 1)"
        raise ValueError(
            f"rnn: mask shape {shape} does not fit the inputs (B={batch}, T={steps}): expected "
            f"{expected} or {expected + (1,)}, i.e. {layout}."
        )
    m = (m != 0).reshape(expected)
    if time_major:
        return m
    # (B, T) -> (T, B), contiguous. One copy through ``.T`` (NumPy, CuPy and torch arrays have it;
    # on a GPU a copy per column would be T kernel launches per call); else column by column.
    out = xp.empty((steps, batch), dtype=m.dtype)
    transposed = getattr(m, "T", None)
    if transposed is not None and tuple(transposed.shape) == (steps, batch):
        out[...] = transposed
        return out
    for t in range(steps):
        out[t] = m[:, t]
    return out


def _input_length_to_steps(input_length, xp, batch, steps):
    """Check ``input_length``; return a bool ``(T, B)`` step mask for a 1-D one, else None."""
    if isinstance(input_length, (bool, numpy.bool_)):
        raise TypeError(f"rnn: input_length must be an int or a 1-D integer array, got {input_length!r}.")
    if not _is_array(input_length) and not isinstance(input_length, (list, tuple)):
        try:
            length = operator.index(input_length)
        except TypeError:
            raise TypeError(
                "rnn: input_length must be an int or a 1-D integer array of per-sample lengths, "
                f"got {type(input_length).__name__} {input_length!r}."
            ) from None
        if length != steps:
            raise ValueError(f"rnn: int input_length={length} must equal the time length T={steps} of the inputs.")
        return None
    # Host data is checked on the host; only lengths that live on a GPU are read back (once).
    on_host = isinstance(input_length, (numpy.ndarray, numpy.generic, list, tuple))
    host = numpy.asarray(input_length) if on_host else None
    dtype = host.dtype if on_host else input_length.dtype
    if dtype_kind(dtype) not in "iu":  # whole floats too, as 3.0 is no int input_length
        raise TypeError(f"rnn: input_length must hold integers, got dtype {dtype}.")
    lengths = xp.asarray(input_length)
    shape = tuple(lengths.shape)
    if len(shape) == 0:  # a 0-d array is an int
        return _input_length_to_steps(int(lengths), xp, batch, steps)
    if shape != (batch,):
        raise ValueError(
            f"rnn: input_length must be an int or a 1-D array of per-sample lengths of shape "
            f"(B,)=({batch},), got shape {shape}."
        )
    if batch == 0:
        return xp.zeros((steps, 0), dtype=bool)
    smallest, largest = (int(host.min()), int(host.max())) if on_host else _device_bounds(lengths, xp)
    if smallest < 0:
        raise ValueError(f"rnn: input_length values must be >= 0, got a length of {smallest}.")
    if largest > steps:
        raise ValueError(
            f"rnn: input_length values must be <= the time length T={steps} of the inputs, got a "
            f"length of {largest}."
        )
    # valid iff t < input_length[b], t in original time order (forwards and backwards alike).
    times = xp.asarray(list(range(steps))).reshape((steps, 1))
    return times < lengths.reshape((1, batch))


def _device_bounds(lengths: Any, xp: Any) -> tuple[int, int]:
    """``(min, max)`` of a device array in one read-back: each read waits for the GPU's queue."""
    bounds = xp.empty((2,), dtype=lengths.dtype)
    bounds[0] = lengths.min()
    bounds[1] = lengths.max()
    smallest, largest = bounds.tolist()
    return int(smallest), int(largest)


def prepare(
    step_function,
    inputs,
    initial_states,
    go_backwards=False,
    mask=None,
    constants=None,
    unroll=False,
    input_length=None,
    time_major=False,
    zero_output_for_mask=False,
    return_all_outputs=True,
    xp=numpy,
    backend="",
) -> RnnCall:
    """Check every argument of ``rnn`` and return the normalised ``RnnCall``; no step runs.

    ``backend`` is the name of the backend running the call (it appears in the note added to an
    exception raised by ``step_function``)."""
    if not callable(step_function):
        raise TypeError(f"rnn: step_function must be callable, got {type(step_function).__name__}.")
    go_backwards = _flag("go_backwards", go_backwards)
    unroll = _flag("unroll", unroll)
    time_major = _flag("time_major", time_major)
    zero_output_for_mask = _flag("zero_output_for_mask", zero_output_for_mask)
    return_all_outputs = _flag("return_all_outputs", return_all_outputs)

    input_leaves, input_treespec, input_names, batch, steps = _check_inputs(inputs, time_major)
    state_leaves, state_treespec, state_names = _check_states(initial_states)

    if constants is None:
        constants = ()
    elif not isinstance(constants, (list, tuple)):
        raise TypeError(f"rnn: constants must be a list or tuple (or None), got {type(constants).__name__}.")
    constants = tuple(constants)

    const_paths, const_leaves, _ = optree.tree_flatten_with_path(constants)
    named = list(zip(input_names, input_leaves)) + list(zip(state_names, state_leaves))
    named += [(format_path("constants", p), leaf) for p, leaf in zip(const_paths, const_leaves)]
    if mask is not None:
        named.append(("mask", mask))
    if input_length is not None:
        named.append(("input_length", input_length))
    _check_libraries(named)

    step_mask = None
    if input_length is not None:  # checked even when the mask wins, so a bad one never passes
        step_mask = _input_length_to_steps(input_length, xp, batch, steps)
    if mask is not None:
        step_mask = _mask_to_steps(mask, xp, batch, steps, time_major)

    if step_mask is not None:
        # The mask is applied per sample, so every state needs the batch as its first axis.
        for name, leaf in zip(state_names, state_leaves):
            if leaf.ndim < 1 or leaf.shape[0] != batch:
                raise ValueError(
                    f"rnn: with a mask, each state must have the batch size B={batch} as its first "
                    f"axis; {name} has shape {tuple(leaf.shape)}."
                )

    return RnnCall(
        step_function=step_function,
        input_leaves=list(input_leaves),
        input_treespec=input_treespec,
        input_paths=input_names,
        time_major=time_major,
        batch_size=batch,
        time_steps=steps,
        initial_states=initial_states,
        state_leaves=list(state_leaves),
        state_treespec=state_treespec,
        state_paths=state_names,
        constants=constants,
        step_mask=step_mask,
        go_backwards=go_backwards,
        zero_output_for_mask=zero_output_for_mask,
        return_all_outputs=return_all_outputs,
        unroll=unroll,
        xp=xp,
        backend=backend,
    )
