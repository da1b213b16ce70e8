"""Legacy HDF5 ``.h5`` models, written by ``model.save("x.h5")`` in tf.keras 2 / tf_keras
(``tf_keras/src/saving/legacy/hdf5_format.py``) or Keras 3
(``keras/src/legacy/saving/legacy_h5_format.py``).

Layout: root attributes ``model_config`` (JSON), ``keras_version``, ``backend`` (and
``training_config``, ignored); group ``model_weights`` with attribute ``layer_names`` (the
names of ``model.layers``, in order) and one group per layer with attribute ``weight_names``;
the weights are the datasets ``model_weights/<layer>/<weight_name>``, in ``weight_names``
order, which is the layer's ``trainable_weights + non_trainable_weights``
(``_legacy_weights``). Large attributes are split into ``layer_names0``, ``layer_names1``, ...
(``load_attributes_from_hdf5_group``). ``optimizer_weights`` is ignored.

A file written by ``save_weights`` holds weights without ``model_config``: it cannot be run.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .._errors import ModelFileError
from .._spec import ModelSpec
from ._assemble import model_spec
from ._config import MAX_CONFIG_BYTES, keras_major, parse_json
from ._graph import RawLayer, parse_graph
from ._weights import h5py, read_dataset


def read(path: str) -> ModelSpec:
    h5 = h5py()
    try:
        f = h5.File(path, "r")
    except OSError as e:
        raise ModelFileError(
            f"{path!r} is not a readable HDF5 file (truncated or corrupt .h5 file?): {e}") from e
    try:
        with f:
            return _read(f, path)
    except ModelFileError:
        raise
    except (OSError, RuntimeError, KeyError) as e:
        raise ModelFileError(
            f"{path!r} cannot be read (truncated or corrupt .h5 file?): {e}") from e


def _read(f: Any, path: str) -> ModelSpec:
    config_text = f.attrs.get("model_config")
    if config_text is None:
        if "layer_names" in f.attrs or "layers" in f or "vars" in f:
            raise ModelFileError(
                f"{path!r} is a weights-only file (written by save_weights): it holds no model "
                f"config; gpukb.keras.load_model needs a whole model saved with model.save()")
        raise ModelFileError(
            f"{path!r} is an HDF5 file without a model_config attribute: not a Keras model")
    if isinstance(config_text, np.ndarray):           # some writers store a 1-element array
        config_text = config_text.item() if config_text.size == 1 else None
    if not isinstance(config_text, (str, bytes)) or len(config_text) > MAX_CONFIG_BYTES:
        raise ModelFileError(f"{path!r}: the model_config attribute is not a JSON string")
    weights_group = f.get("model_weights")
    version = f.attrs.get("keras_version")
    if version is None and weights_group is not None:
        version = weights_group.attrs.get("keras_version")
    version, major = keras_major(version, path, "the HDF5 attributes")
    root = parse_json(config_text, path, "the model_config attribute")
    if weights_group is None:
        raise ModelFileError(
            f"{path!r} has no model_weights group: the model's weights are missing")
    layer_names = set(_attribute_list(weights_group, "layer_names"))

    def is_operation(entry: dict[str, Any]) -> bool:
        # Keras 3 saves its graph operations (e.g. the NotEqual of a mask) like layers, without
        # the module that tells them apart; they are not in model.layers, hence not in
        # layer_names.
        name = entry.get("name", entry["config"].get("name"))
        return major >= 3 and entry["class_name"] != "InputLayer" and name not in layer_names

    graph = parse_graph(root, keras_major=major, path=path, is_operation=is_operation)
    weights = {layer.name: _layer_weights(weights_group, layer, path)
               for layer in graph.layers if not layer.is_operation}
    return model_spec(graph, weights, keras_version=version, keras_major=major,
                      file_format="h5", path=path)


def _attribute_list(group: Any, name: str) -> list[str]:
    """A list attribute, also when split into ``name0``, ``name1``, ..."""
    if name in group.attrs:
        values = list(group.attrs[name])
    else:
        values, chunk = [], 0
        while f"{name}{chunk}" in group.attrs:
            values.extend(group.attrs[f"{name}{chunk}"])
            chunk += 1
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values]


def _layer_weights(weights_group: Any, layer: RawLayer, path: str) -> list[np.ndarray]:
    if layer.name not in weights_group:
        return []
    group = weights_group[layer.name]
    names = _attribute_list(group, "weight_names")
    context = f"layer {layer.name!r}"
    arrays = [read_dataset(group, name, path, context) for name in names]
    if layer.class_name == "Bidirectional":
        arrays = _forward_first(names, arrays)
    return arrays


def _forward_first(names: list[str], arrays: list[np.ndarray]) -> list[np.ndarray]:
    """A Bidirectional layer's weights as ``get_weights()`` lists them when nothing in it is
    frozen: the forward layer's, then the backward layer's. The file lists trainable weights
    before non-trainable ones, which interleaves the two halves when one is frozen. The halves
    are told apart by name: ``<bidirectional>/forward_<name>/...`` is the forward layer (both
    Keras versions rename it so)."""
    parts = [name.split("/") for name in names]
    if not all(len(p) >= 3 for p in parts):
        return arrays
    forward = [p[1].startswith("forward_") for p in parts]
    order = sorted(range(len(arrays)), key=lambda i: not forward[i])
    return [arrays[i] for i in order]
