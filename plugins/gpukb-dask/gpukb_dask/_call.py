"""One ``gpukb.rnn`` call on Dask arrays, checked and laid out before any graph is built.

``prepare_dask_call`` does, in order, all on the client and without computing anything:
  1. NumPy arrays (states, masks, lengths, constants) next to Dask inputs become one-chunk Dask
     arrays, so gpukb's own validation (``Backend.prepare``, gpukb's usual errors) sees one
     library; lengths are handed to it in a form it checks without reading Dask data;
  2. what splitting the batch needs: known chunk sizes, the backend that runs the inputs' chunk
     type (``_owner``; other Dask arguments: that type or NumPy), states and Dask constants with
     the batch as their first axis (unless there is one block);
  3. the probe: ``gpukb.rnn`` over one step of an empty batch (or, if the step raises there, of
     one zero sample), which tells the shapes and dtypes of the results (the step is called once
     there, as Dask's ``map_blocks`` calls a function on empty arrays to learn its output);
  4. every per-sample Dask array rechunked to the inputs' batch chunks, time and features whole
     (nothing new when they already are); NumPy ones stay NumPy, to be sliced into each
     block's task, so they add no task to the graph.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import optree

import gpukb

from ._block import PerSample, Program, as_chunks, fill_constants
from ._owner import block_backend

_FLAGS = ("go_backwards", "unroll", "time_major", "zero_output_for_mask", "return_all_outputs")


@dataclass(frozen=True, eq=False)
class Split:
    """An argument of the blocks: a Dask array with the batch axis ``axis`` in the inputs'
    batch chunks and every other axis one chunk (a block gets its chunk), or a NumPy array
    (a block gets its slice, written into its task); ``axis`` None: whole, the same for every
    block (a Dask array of one chunk, or a NumPy array)."""

    value: Any
    axis: int | None


@dataclass(frozen=True, eq=False)
class DaskCall:
    """A checked call, ready to become a graph: one task per block of ``batch_chunks``."""

    program: Program
    batch_chunks: tuple
    inputs: list            # Split per input leaf
    states: list            # Split per state leaf (whole only when there is one block)
    mask: Split | None
    input_length: Any       # Split (per-sample lengths), an int, or None
    constant_pieces: list   # Split per per-sample (Dask) constant
    results: list           # per result leaf: (shape with None at the batch axis, dtype, batch axis)
    block_backend: gpukb.Backend  # runs the blocks; its asarray makes the results' meta


def _is_dask(x: Any) -> bool:
    return type(x).__module__.startswith("dask.") and hasattr(x, "chunks") and hasattr(x, "dask")


def _named_leaves(root: str, tree: Any) -> list:
    paths, leaves, _ = optree.tree_flatten_with_path(tree)
    return [(root + "".join(f"[{key!r}]" for key in path), leaf) for path, leaf in zip(paths, leaves)]


def _one_chunk(da: Any, value: Any, originals: dict) -> Any:
    """A NumPy array as a one-chunk Dask array, remembered in ``originals`` (by the Dask
    array's id); anything else as it is (for gpukb to judge)."""
    if isinstance(value, np.ndarray):
        wrapped = da.from_array(value, chunks=value.shape if value.ndim else ())
        originals[id(wrapped)] = value
        return wrapped
    return value


def _lengths(da: Any, input_length: Any, originals: dict) -> tuple[Any, Any]:
    """``(for gpukb's check, for the blocks)`` of ``input_length``.

    The core checks per-sample lengths on the host when they come as a list (so no Dask data is
    read at the call); Dask lengths are given to it as zeros of their shape and dtype, and their
    values are checked by gpukb.rnn in each block, where they are computed.
    """
    if isinstance(input_length, (list, tuple)):
        input_length = np.asarray(input_length)
    dtype = getattr(input_length, "dtype", None)
    integer = dtype is not None and np.dtype(dtype).kind in "iu"
    if _is_dask(input_length):
        if integer and input_length.ndim == 1:
            return [0] * input_length.shape[0], input_length
        if integer and input_length.ndim == 0:
            length = int(input_length.compute())  # one integer: the call needs it to check T
            return length, length
        return input_length, None  # gpukb refuses it (dtype or rank)
    if isinstance(input_length, np.ndarray):
        if integer and input_length.ndim == 1:
            return input_length.tolist(), input_length
        if integer and input_length.ndim == 0:
            return int(input_length), int(input_length)
        return _one_chunk(da, input_length, originals), None
    return input_length, input_length  # an int, None, or something gpukb refuses


def _check_known_chunks(named: list) -> None:
    for name, leaf in named:
        if _is_dask(leaf) and any(math.isnan(n) for n in leaf.shape):
            raise ValueError(
                f"rnn: {name} is a Dask array of unknown shape {leaf.shape}; gpukb-dask splits the "
                "batch by chunk sizes, so call .compute_chunk_sizes() on it first.")


def prepare_dask_call(backend: gpukb.Backend, step_function: Any, inputs: Any, initial_states: Any,
                      options: dict) -> DaskCall:
    da = backend.xp
    options = dict(options)
    mask = options.pop("mask", None)
    constants = options.pop("constants", None)
    input_length = options.pop("input_length", None)

    # 1. gpukb's validation, on Dask arrays only (nothing is computed).
    originals: dict = {}  # id of a one-chunk Dask array -> the NumPy array it wraps
    if isinstance(mask, (list, tuple)):
        mask = np.asarray(mask)
    lengths_check, lengths = _lengths(da, input_length, originals)
    user_inputs = inputs
    inputs = optree.tree_map(lambda x: _one_chunk(da, x, originals), inputs)
    initial_states = optree.tree_map(lambda x: _one_chunk(da, x, originals), initial_states)
    mask = _one_chunk(da, mask, originals)
    constants_check = optree.tree_map(lambda x: _one_chunk(da, x, originals), constants)
    named = (_named_leaves("inputs", inputs) + _named_leaves("initial_states", initial_states)
             + _named_leaves("constants", constants_check) + [("mask", mask), ("input_length", lengths)])
    _check_known_chunks(named)
    call = backend.prepare(step_function, inputs, initial_states, mask=mask, constants=constants_check,
                           input_length=lengths_check, **options)
    batch, time_major = call.batch_size, call.time_major
    flags = {flag: getattr(call, flag) for flag in _FLAGS}

    # 2. What splitting the batch needs: the blocks' backend, and every state per sample.
    input_axis = 1 if time_major else 0
    first_dask = next((leaf for leaf in optree.tree_leaves(user_inputs) if _is_dask(leaf)), None)
    chunks = first_dask.chunks[input_axis] if first_dask is not None else (batch,)
    if batch == 0:
        chunks = (0,)
    chunk_type = type(call.input_leaves[0]._meta)
    runner = block_backend(call.input_leaves[0]._meta, call.input_paths[0])
    for name, leaf in named:
        if _is_dask(leaf) and not isinstance(leaf._meta, (chunk_type, np.ndarray)):
            raise TypeError(
                f"rnn: {name} has {type(leaf._meta).__module__}.{type(leaf._meta).__qualname__} "
                f"chunks but the inputs have {chunk_type.__module__}.{chunk_type.__qualname__} "
                "chunks; give it as a NumPy array or with the inputs' chunk type.")
    convert_numpy = not issubclass(chunk_type, np.ndarray)
    blocks = len(chunks)

    per_sample_states = [leaf.ndim >= 1 and leaf.shape[0] == batch for leaf in call.state_leaves]
    for name, leaf, per_sample in zip(call.state_paths, call.state_leaves, per_sample_states):
        if not per_sample and blocks > 1:
            raise ValueError(
                f"rnn: {name} has shape {tuple(leaf.shape)}, without the batch size B={batch} as "
                f"its first axis, but the inputs' batch is in {blocks} chunks: gpukb-dask runs each "
                "chunk on its own, so every state must be per sample. Rechunk the inputs to one "
                "batch chunk (x.rechunk({%d: -1})) to run the whole batch as one block." % input_axis)

    whole_constants, pieces = _split_constants(constants, batch)

    # 3. The probe: shapes and dtypes of the results.
    probe = _probe(step_function, call, per_sample_states, whole_constants, pieces, runner.name,
                   convert_numpy)
    results = _result_layout(call, probe, per_sample_states)

    # 4. Everything per sample in the inputs' batch chunks, time and features whole.
    def split(leaf: Any, axis: int | None) -> Split:
        leaf = originals.get(id(leaf), leaf)
        if _is_dask(leaf):
            leaf = leaf.rechunk({d: (chunks if d == axis else -1) for d in range(leaf.ndim)})
        return Split(leaf, axis)

    program = Program(
        step_function=step_function, input_treespec=call.input_treespec,
        state_treespec=call.state_treespec, constants=whole_constants, options=flags,
        backend=runner.name, convert_numpy=convert_numpy,
        expected=tuple((shape, dtype) for shape, dtype, _ in results),
        result_treespecs=tuple(optree.tree_structure(part) for part in probe),
    )
    return DaskCall(
        program=program,
        batch_chunks=tuple(chunks),
        inputs=[split(leaf, input_axis) for leaf in call.input_leaves],
        states=[split(leaf, 0 if per_sample else None)
                for leaf, per_sample in zip(call.state_leaves, per_sample_states)],
        mask=None if mask is None else split(mask, 1 if time_major else 0),
        input_length=split(lengths, 0) if getattr(lengths, "ndim", 0) == 1 else lengths,
        constant_pieces=[split(piece, 0) for piece in pieces],
        results=results,
        block_backend=runner,
    )


def _split_constants(constants: Any, batch: int) -> tuple[Any, list]:
    """Dask constants are per sample (split with the batch); all others go whole to each block."""
    if constants is None:
        return None, []
    pieces: list = []
    named = dict(_named_leaves("constants", tuple(constants)))
    names = {id(leaf): name for name, leaf in named.items()}

    def place(leaf: Any) -> Any:
        if not _is_dask(leaf):
            return leaf
        if leaf.ndim < 1 or leaf.shape[0] != batch:
            raise ValueError(
                f"rnn: {names.get(id(leaf), 'a constant')} is a Dask array of shape "
                f"{tuple(leaf.shape)}; gpukb-dask splits Dask constants with the batch, so they "
                f"need the batch size B={batch} as their first axis. Pass a NumPy array to send a "
                "constant whole to every block.")
        pieces.append(leaf)
        return PerSample(len(pieces) - 1)

    return type(constants)(optree.tree_map(place, tuple(constants))), pieces


def _probe(step_function: Any, call: Any, per_sample_states: list, whole_constants: Any,
           pieces: list, runner: str, convert_numpy: bool) -> tuple:
    """``gpukb.rnn`` over one time step of an empty batch, in the chunk type, on the blocks'
    backend; if the step raises there (``x.reshape(batch, -1)`` does), of a batch of one zero
    sample. The results' shapes past the batch and their dtypes are what the Dask arrays declare."""
    args = (step_function, call, per_sample_states, whole_constants, pieces, runner, convert_numpy)
    try:
        return _probe_batch(0, *args)
    except Exception as empty_error:
        try:
            with np.errstate(all="ignore"):  # zeros are no data: log(0) or 0/0 mean nothing here
                return _probe_batch(1, *args)
        except Exception:
            pass
        if hasattr(empty_error, "add_note"):
            empty_error.add_note(
                "gpukb-dask: raised when the step function ran over one time step of an empty batch "
                "(and again on a batch of one zero sample), which gpukb-dask does at the call to "
                "learn the shapes and dtypes of the results before building the Dask graph.")
        raise empty_error


def _probe_batch(size: int, step_function: Any, call: Any, per_sample_states: list,
                 whole_constants: Any, pieces: list, runner: str, convert_numpy: bool) -> tuple:
    t_axis, b_axis = (0, 1) if call.time_major else (1, 0)

    def input_step(leaf: Any) -> Any:
        shape = list(leaf.shape)
        shape[t_axis], shape[b_axis] = 1, size
        return np.zeros(tuple(shape), dtype=leaf.dtype)

    def samples(leaf: Any) -> Any:
        return np.zeros((size,) + tuple(leaf.shape[1:]), dtype=leaf.dtype)

    inputs: Any = optree.tree_unflatten(call.input_treespec, [input_step(x) for x in call.input_leaves])
    states: Any = optree.tree_unflatten(call.state_treespec, [
        samples(s) if split else np.zeros(tuple(s.shape), dtype=s.dtype)
        for s, split in zip(call.state_leaves, per_sample_states)])
    constants = fill_constants(whole_constants, [samples(piece) for piece in pieces])
    if convert_numpy:
        inputs, states, constants = as_chunks(runner, (inputs, states, constants))
    return gpukb.rnn(step_function, inputs, states, constants=constants, time_major=call.time_major,
                     backend=runner)


def _result_layout(call: Any, probe: tuple, per_sample_states: list) -> list:
    """(shape with None at the batch axis, dtype, batch axis or None) of each result leaf."""
    steps_out = call.time_steps if call.return_all_outputs else 1
    results: list[tuple[tuple, Any, int | None]] = []
    for leaf in optree.tree_leaves(probe[0]):
        results.append(((None,) + tuple(leaf.shape[1:]), leaf.dtype, 0))
    for leaf in optree.tree_leaves(probe[1]):
        tail = tuple(leaf.shape[2:])
        if call.time_major:
            results.append(((steps_out, None) + tail, leaf.dtype, 1))
        else:
            results.append(((None, steps_out) + tail, leaf.dtype, 0))
    for leaf, initial, split in zip(optree.tree_leaves(probe[2]), call.state_leaves, per_sample_states):
        if split:
            results.append(((None,) + tuple(leaf.shape[1:]), leaf.dtype, 0))
        else:
            results.append((tuple(initial.shape), leaf.dtype, None))
    return results
