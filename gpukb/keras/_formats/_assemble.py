"""The last step of every reader: a parsed graph and the weights read for its layers, checked
and put together as a ``ModelSpec``."""

from __future__ import annotations

import numpy as np

from .._spec import LayerSpec, ModelSpec
from ._graph import Graph
from ._weights import check_weights_present


def model_spec(graph: Graph, weights: dict[str, list[np.ndarray]], *, keras_version: str,
               keras_major: int, file_format: str, path: str) -> ModelSpec:
    layers: dict[str, LayerSpec] = {}
    for index, layer in enumerate(graph.layers):
        arrays = weights.get(layer.name, [])
        if not layer.is_operation:
            check_weights_present(layer.name, layer.class_name, layer.config, index, arrays, path)
        layers[layer.name] = LayerSpec(layer.name, layer.class_name, layer.config, arrays, index)
    return ModelSpec(
        name=graph.name, class_name=graph.class_name, keras_version=keras_version,
        keras_major=keras_major, file_format=file_format, layers=layers, nodes=graph.nodes,
        inputs=graph.inputs, outputs=graph.outputs, input_shapes=graph.input_shapes,
        input_dtypes=graph.input_dtypes)
