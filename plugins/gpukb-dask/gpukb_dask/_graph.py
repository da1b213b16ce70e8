"""The Dask graph of a checked call: per batch block, one ``run_block`` task and one getitem task
per result array (Dask arrays are one key per chunk, and the block's results come from one task);
plus one key, for the whole graph, for the ``Program`` the blocks share.

NumPy arguments (states, masks, lengths next to a Dask input) are sliced into each block's task,
so they add no task; Dask arguments add theirs (a rechunk only when their batch chunks differ from
the inputs', or their time or feature axes are split). The Program is a plain graph value under
its own key, a dependency of every block task: Dask's distributed scheduler moves it to each
worker that needs it, once per worker (a value written into every task would travel, and be
unpickled, once per task).
"""

from __future__ import annotations

import operator
import uuid
from itertools import accumulate
from typing import Any

import numpy as np
import optree

from ._block import run_block
from ._call import DaskCall, Split


def _block_key(array: Any, axis: int | None, block: int) -> tuple:
    """The key of ``array``'s chunk ``block`` along ``axis`` (its only chunk when axis is None)."""
    return (array.name,) + tuple(block if d == axis else 0 for d in range(array.ndim))


def _is_dask(value: Any) -> bool:
    return hasattr(value, "dask") and hasattr(value, "name")


def _block_argument(split: Split, block: int, bounds: list) -> Any:
    """What block ``block``'s task gets of ``split``: a Dask key, or NumPy data."""
    if _is_dask(split.value):
        return _block_key(split.value, split.axis, block)
    if split.axis is None:
        return split.value
    index = [slice(None)] * split.value.ndim
    index[split.axis] = slice(bounds[block], bounds[block + 1])
    return np.ascontiguousarray(split.value[tuple(index)])  # pickles only the block's samples


def build_results(call: DaskCall) -> tuple[Any, Any, Any]:
    import dask.array as da
    from dask.highlevelgraph import HighLevelGraph

    token = uuid.uuid4().hex  # a fresh name per call: step functions need not be pure
    program_key = f"gpukb-rnn-program-{token}"
    rnn_name = f"gpukb-rnn-{token}"
    bounds = [0, *accumulate(call.batch_chunks)]
    splits = call.inputs + call.states + call.constant_pieces + ([call.mask] if call.mask is not None else [])
    lengths = call.input_length
    if isinstance(lengths, Split):
        splits.append(lengths)
    collections = [split.value for split in splits if _is_dask(split.value)]

    layer: dict = {program_key: call.program}
    for i in range(len(call.batch_chunks)):
        layer[(rnn_name, i)] = (
            run_block, program_key,
            [_block_argument(x, i, bounds) for x in call.inputs],
            [_block_argument(s, i, bounds) for s in call.states],
            None if call.mask is None else _block_argument(call.mask, i, bounds),
            _block_argument(lengths, i, bounds) if isinstance(lengths, Split) else lengths,
            [_block_argument(c, i, bounds) for c in call.constant_pieces],
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
        meta = call.block_backend.asarray(np.empty((0,) * len(shape), dtype=dtype))
        arrays.append(da.Array(HighLevelGraph(layers, dependencies), name, chunks, meta=meta))

    specs = call.program.result_treespecs
    counts = [spec.num_leaves for spec in specs]
    last = optree.tree_unflatten(specs[0], arrays[:counts[0]])
    outputs = optree.tree_unflatten(specs[1], arrays[counts[0]:counts[0] + counts[1]])
    states = optree.tree_unflatten(specs[2], arrays[counts[0] + counts[1]:])
    return last, outputs, states
