"""What runs on a worker: one block of the batch through ``gpukb.rnn`` on the block's backend.

``Program`` holds everything that is the same for every block (the step function with its
weights, the constants sent whole, the flags, the structures): the graph keeps it under one key
that every block task depends on, so Dask sends it to each worker once, not once per task.
A block's own arguments are chunks of Dask arrays or slices of NumPy arrays written into its task;
NumPy ones next to chunks of another type (CuPy) become that type here, with the block backend's
``asarray``. This module imports only NumPy, gpukb and optree: it is unpickled on workers, where
the client-side modules of the plugin are not needed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import optree

import gpukb


class PerSample:
    """Stands in a constants structure for the k-th constant that is split with the batch."""

    def __init__(self, index: int) -> None:
        self.index = index


@dataclass(frozen=True, eq=False)
class Program:
    step_function: Any
    input_treespec: Any
    state_treespec: Any
    constants: tuple | None        # with a PerSample where a block's own piece goes
    options: dict                  # the normalised flags of the call
    backend: str                   # the chunk type's backend: "cpu" for NumPy, "cuda" for CuPy
    convert_numpy: bool            # chunks are not NumPy: NumPy arguments become the chunk type
    expected: tuple                # (shape, None at the batch axis; dtype) of each result leaf
    result_treespecs: tuple        # (last_output, outputs, new_states)


def fill_constants(template: Any, pieces: list) -> Any:
    """The constants of one block: its own pieces where the template has a PerSample, the rest
    whole."""
    if template is None:
        return None
    return optree.tree_map(lambda c: pieces[c.index] if isinstance(c, PerSample) else c,
                           template, is_leaf=lambda c: isinstance(c, PerSample))


def as_chunks(backend: str, tree: Any) -> Any:
    """``tree`` with each NumPy array as an array of ``backend`` (CuPy for ``cuda``)."""
    to_chunks = gpukb.get_backend(backend).asarray
    return optree.tree_map(lambda v: to_chunks(v) if isinstance(v, np.ndarray) else v, tree)


def run_block(program: Program, inputs: list, states: list, mask: Any, input_length: Any,
              constant_pieces: list) -> tuple:
    """``gpukb.rnn`` on one block; the flat leaves of (last_output, outputs, new_states)."""
    constants: Any = fill_constants(program.constants, constant_pieces)
    if program.convert_numpy:
        inputs, states, mask, input_length, constants = as_chunks(
            program.backend, (inputs, states, mask, input_length, constants))
    result = gpukb.rnn(
        program.step_function,
        optree.tree_unflatten(program.input_treespec, inputs),
        optree.tree_unflatten(program.state_treespec, states),  # type: ignore[arg-type]
        mask=mask, input_length=input_length, constants=constants,
        backend=program.backend, **program.options,
    )
    leaves = [leaf for part in result for leaf in optree.tree_leaves(part)]
    _check_like_the_probe(program, leaves)
    return tuple(leaves)


def _check_like_the_probe(program: Program, leaves: list) -> None:
    """The Dask arrays were declared from the step's output on an empty batch; a step that
    answers differently on real data would make them lie, so it stops here instead."""
    if len(leaves) != len(program.expected):
        raise ValueError(f"gpukb-dask: the step function returned {len(leaves)} result arrays on a "
                         f"block but {len(program.expected)} on the empty batch it was probed with.")
    for index, (leaf, (shape, dtype)) in enumerate(zip(leaves, program.expected)):
        seen = tuple(None if want is None else got for got, want in zip(leaf.shape, shape))
        if len(leaf.shape) != len(shape) or seen != shape or leaf.dtype != dtype:
            promised = tuple("batch" if n is None else n for n in shape)
            raise ValueError(
                f"gpukb-dask: result array {index} of a block has shape {tuple(leaf.shape)} and "
                f"dtype {leaf.dtype}, but the step function's answer on an empty batch promised "
                f"{promised} and {dtype}; its outputs' shapes and dtypes must not depend on the "
                "batch's size or values.")
