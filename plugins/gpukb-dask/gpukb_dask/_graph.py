"""The Dask graph of a checked call: one ``run_block`` task per batch block, one key for the
``Program`` they share, and one getitem task per block and result array.

The Program is a plain graph value under its own key, a dependency of every block task: Dask's
distributed scheduler runs it on one worker and moves it to each other worker that needs it,
once per worker (a value written into every task would travel, and be unpickled, once per task).
"""

from __future__ import annotations

import operator
import uuid
from typing import Any

import optree

from ._block import run_block
from ._call import DaskCall


def _block_key(array: Any, axis: int | None, block: int) -> tuple:
    """The key of ``array``'s chunk ``block`` along ``axis`` (its only chunk when axis is None)."""
    return (array.name,) + tuple(block if d == axis else 0 for d in range(array.ndim))


def build_results(call: DaskCall) -> tuple[Any, Any, Any]:
    import dask.array as da
    from dask.highlevelgraph import HighLevelGraph

    token = uuid.uuid4().hex  # a fresh name per call: step functions need not be pure
    program_key = f"gpukb-rnn-program-{token}"
    rnn_name = f"gpukb-rnn-{token}"
    length_is_array = hasattr(call.input_length, "dask")
    collections = list(call.inputs) + list(call.states) + list(call.constant_pieces)
    collections += [a for a in (call.mask, call.input_length if length_is_array else None) if a is not None]

    layer: dict = {program_key: call.program}
    for i in range(len(call.batch_chunks)):
        layer[(rnn_name, i)] = (
            run_block, program_key,
            [_block_key(x, call.input_batch_axis, i) for x in call.inputs],
            [_block_key(s, 0 if split else None, i) for s, split in zip(call.states, call.per_sample_states)],
            None if call.mask is None else _block_key(call.mask, call.mask_batch_axis, i),
            _block_key(call.input_length, 0, i) if length_is_array else call.input_length,
            [_block_key(c, 0, i) for c in call.constant_pieces],
        )
    graph = HighLevelGraph.from_collections(rnn_name, layer, dependencies=collections)

    arrays = []
    for index, (shape, dtype, batch_axis) in enumerate(call.results):
        name = f"gpukb-rnn-result{index}-{token}"
        blocks = range(len(call.batch_chunks)) if batch_axis is not None else range(1)
        pieces = {(name,) + tuple(i if d == batch_axis else 0 for d in range(len(shape))):
                  (operator.getitem, (rnn_name, i), index) for i in blocks}
        chunks = tuple(call.batch_chunks if d == batch_axis else (n,) for d, n in enumerate(shape))
        layers: dict[str, Any] = dict(graph.layers)
        layers[name] = pieces
        dependencies = dict(graph.dependencies)
        dependencies[name] = {rnn_name}
        meta = call.meta_module.empty((0,) * len(shape), dtype=dtype)
        arrays.append(da.Array(HighLevelGraph(layers, dependencies), name, chunks, meta=meta))

    specs = call.program.result_treespecs
    counts = [spec.num_leaves for spec in specs]
    last = optree.tree_unflatten(specs[0], arrays[:counts[0]])
    outputs = optree.tree_unflatten(specs[1], arrays[counts[0]:counts[0] + counts[1]])
    states = optree.tree_unflatten(specs[2], arrays[counts[0] + counts[1]:])
    return last, outputs, states
