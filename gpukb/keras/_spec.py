"""What a saved Keras model is, once read: the contract between the file readers
(``gpukb.keras._formats``) and the model that runs it (``gpukb.keras._model``).

A reader turns any supported file (Keras 3 ``.keras``, tf_keras ``.keras``, legacy HDF5 ``.h5``)
into one ``ModelSpec``; nothing downstream knows which format it came from, except through
``keras_major`` (2 or 3), which selects the semantics of the Keras version that wrote the file
where the two differ (``hard_sigmoid``, say).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class TensorRef:
    """Output ``tensor_index`` of the ``node_index``-th call of layer ``layer`` (Keras's
    ``keras_history``); for an ``InputLayer``, node 0, tensor 0 is the model input.
    ``node_index`` is the position of the call among that layer's ``NodeSpec``s (the readers
    remove the unsaved first call that files count for a nested model)."""

    layer: str
    node_index: int = 0
    tensor_index: int = 0


@dataclass(frozen=True)
class LayerSpec:
    """One layer as saved.

    Keras 3 also records the ``keras.ops`` calls of a functional model (mask arithmetic:
    ``NotEqual``, ``Any``, ...) as graph nodes; the readers give them a ``class_name`` prefixed
    with ``"ops."`` (``"ops.NotEqual"``), so they can never be taken for a layer class.

    ``config`` is the layer's Keras config as stored in the file (a dict, nested layers' configs
    inside it, e.g. ``config["layer"]`` of a ``Bidirectional``), with the dialect differences that
    do not change meaning removed by the reader (see ``_formats``). ``weights`` is the list Keras's
    ``layer.get_weights()`` returns, in that order (``Bidirectional``: the forward layer's, then
    the backward layer's; ``TimeDistributed``: the inner layer's); ``index`` is the layer's
    position in the model (for error messages).
    """

    name: str
    class_name: str
    config: dict[str, Any]
    weights: list[np.ndarray]
    index: int


@dataclass(frozen=True)
class NodeSpec:
    """One call of a layer in the graph: ``layer(*args, **kwargs)`` where each ``TensorRef`` in
    ``args`` / ``kwargs`` (at any nesting in lists, tuples and dicts) stands for a tensor of the
    graph. ``kwargs`` keeps what Keras stored (``mask``, ``initial_state``, ``training``, ...).
    Nodes are listed in an order where every node comes after the nodes it reads."""

    layer: str
    node_index: int
    args: list[Any]
    kwargs: dict[str, Any]


@dataclass(frozen=True)
class ModelSpec:
    """A whole model: its layers, the graph of calls, inputs and outputs in Keras's order."""

    name: str
    class_name: str               # "Sequential" or "Functional" (tf.keras "Model")
    keras_version: str            # as recorded in the file, e.g. "3.15.1" or "2.21.0"
    keras_major: int              # 2 (tf.keras / tf_keras) or 3 (Keras 3)
    file_format: str              # "keras_v3", "tf_keras_v3" or "h5"
    layers: dict[str, LayerSpec]  # by name, in the model's layer order
    nodes: list[NodeSpec]
    inputs: list[TensorRef]
    outputs: list[TensorRef]
    input_shapes: list[tuple[int | None, ...]] = field(default_factory=list)  # batch shapes
    input_dtypes: list[str] = field(default_factory=list)
