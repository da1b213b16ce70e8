"""``.keras`` zip archives, written by Keras 3 (``keras/src/saving/saving_lib.py``) or by
tf_keras (``tf_keras/src/saving/saving_lib.py``): ``config.json`` (the model config),
``metadata.json`` (``keras_version``, ``date_saved``) and ``model.weights.h5``.

Weights layout (``_save_state`` / ``_save_container_state`` in both ``saving_lib.py``): the
model's layers sit in the container ``layers/``, each under the snake-case name of its class,
deduplicated in ``model.layers`` order (``lstm``, ``lstm_1``, ...), never under its own name;
``model.layers`` leaves out a Sequential model's ``InputLayer`` and a Functional model's
non-layer operations. A layer's own variables are the datasets ``<path>/vars/0``, ``1``, ...
(trainable then non-trainable, as created); those of the layers it holds sit under the
attribute that holds them: ``cell`` (LSTM, GRU, SimpleRNN), ``forward_layer`` and
``backward_layer`` (Bidirectional; tf_keras also saves its unused template ``layer``),
``layer`` (TimeDistributed), ``layers/`` (a nested model). Everything else (``optimizer/``,
tf_keras ``metrics/``, seed-generator state, top-level ``vars/``) is ignored. tf.keras 2.13
wrote ``_layer_checkpoint_dependencies/`` instead of ``layers/`` (Keras 3's
``H5IOStore.get`` accepts both; so does this reader).
"""

from __future__ import annotations

import io
import re
import zipfile
import zlib
from typing import Any

import numpy as np

from .._errors import ModelFileError
from .._spec import ModelSpec
from ._assemble import model_spec
from ._config import MAX_CONFIG_BYTES, keras_major, parse_json
from ._graph import is_sequential, parse_graph, saved_name
from ._weights import h5py, read_dataset

_CONFIG = "config.json"
_METADATA = "metadata.json"
_WEIGHTS_H5 = "model.weights.h5"
_WEIGHTS_NPZ = "model.weights.npz"
_LAYER_CONTAINERS = ("layers", "_layer_checkpoint_dependencies")
_RNN_CLASSES = ("LSTM", "GRU", "SimpleRNN")
_BROKEN_ZIP = (zipfile.BadZipFile, zlib.error, EOFError, OSError)


def is_operation(entry: dict[str, Any]) -> bool:
    """A Keras 3 graph operation that is not a layer (``keras.src.ops.*``): not in
    ``model.layers``, no weights."""
    module = entry.get("module")
    return isinstance(module, str) and module.startswith(("keras.src.ops.", "keras.ops"))


def read(path: str) -> ModelSpec:
    try:
        archive = zipfile.ZipFile(path)
    except _BROKEN_ZIP as e:
        raise ModelFileError(
            f"{path!r} is not a readable zip archive (truncated or corrupt .keras file?): "
            f"{e}") from e
    with archive:
        names = set(archive.namelist())
        if _CONFIG not in names:
            raise ModelFileError(
                f"{path!r} is a zip archive without {_CONFIG}: not a Keras .keras model")
        if _METADATA not in names:
            raise ModelFileError(
                f"{path!r} has no {_METADATA}, so the Keras version that wrote it (and whose "
                f"semantics it needs) is unknown")
        metadata = parse_json(_read_member(archive, _METADATA, path), path, _METADATA)
        if not isinstance(metadata, dict):
            raise ModelFileError(f"{path!r}: {_METADATA} is not a JSON object")
        version, major = keras_major(metadata.get("keras_version"), path, _METADATA)
        root = parse_json(_read_member(archive, _CONFIG, path), path, _CONFIG)
        graph = parse_graph(root, keras_major=major, path=path, is_operation=is_operation)
        if _WEIGHTS_H5 not in names:
            if _WEIGHTS_NPZ in names:
                raise ModelFileError(
                    f"{path!r} stores its weights as {_WEIGHTS_NPZ}, whose arrays are pickled "
                    f"Python objects; gpukb never unpickles: save with the default "
                    f"weights format (h5)")
            raise ModelFileError(f"{path!r} has no {_WEIGHTS_H5}: the model's weights are missing")
        weights = _read_weights(archive, graph.layers, graph.class_name, path)
    file_format = "keras_v3" if major >= 3 else "tf_keras_v3"
    return model_spec(graph, weights, keras_version=version, keras_major=major,
                      file_format=file_format, path=path)


def _read_member(archive: zipfile.ZipFile, name: str, path: str) -> bytes:
    info = archive.getinfo(name)
    if info.file_size > MAX_CONFIG_BYTES:
        raise ModelFileError(f"{path!r}: {name} declares {info.file_size} bytes; refusing it")
    try:
        return archive.read(name)
    except _BROKEN_ZIP as e:
        raise ModelFileError(f"{path!r}: {name} cannot be read (corrupt archive?): {e}") from e


def _read_weights(archive: zipfile.ZipFile, layers: list[Any], class_name: str,
                  path: str) -> dict[str, list[np.ndarray]]:
    h5 = h5py()
    try:
        # Keras writes the archive uncompressed, so h5py can seek in the member directly;
        # a compressed member is read into memory first.
        member = archive.open(_WEIGHTS_H5)
        if archive.getinfo(_WEIGHTS_H5).compress_type != zipfile.ZIP_STORED:
            member = io.BytesIO(member.read())
        with h5.File(member, "r") as f:
            container = next((_subgroup(f, c, path) for c in _LAYER_CONTAINERS if c in f), None)
            entries = [layer.saved for layer in layers if not layer.is_operation]
            return {saved_name(entry): arrays for entry, arrays in
                    _container(container, entries, is_sequential(class_name), path)}
    except ModelFileError:
        raise
    except (*_BROKEN_ZIP, RuntimeError, KeyError, ValueError) as e:
        raise ModelFileError(
            f"{path!r}: {_WEIGHTS_H5} cannot be read (truncated or corrupt file?): {e}") from e


def snake_case(class_name: str) -> str:
    """``naming.to_snake_case`` (Keras 3) / ``generic_utils.to_snake_case`` (tf_keras)."""
    name = re.sub(r"\W+", "", class_name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def _container(group: Any, entries: list[dict[str, Any]], sequential: bool,
               path: str) -> list[tuple[dict[str, Any], list[np.ndarray]]]:
    """Each saved layer of a model with its weights, named as ``_save_container_state``
    names them (the InputLayer of a Sequential model is not in ``model.layers``)."""
    used: dict[str, int] = {}
    out = []
    for entry in entries:
        if sequential and entry.get("class_name") == "InputLayer":
            continue
        base = snake_case(str(entry.get("class_name")))
        used[base] = used.get(base, -1) + 1
        key = base if used[base] == 0 else f"{base}_{used[base]}"
        sub = _subgroup(group, key, path) if group is not None else None
        out.append((entry, _layer_weights(sub, entry, path, f"layer {saved_name(entry)!r}")))
    return out


def _layer_weights(group: Any, entry: dict[str, Any], path: str,
                   context: str) -> list[np.ndarray]:
    """A layer's ``get_weights()``: its own variables, then those of the layers it holds."""
    if group is None:
        return []
    class_name = entry.get("class_name")
    saved_config = entry.get("config")
    config: dict[str, Any] = saved_config if isinstance(saved_config, dict) else {}
    weights = _own_vars(group, path, context)
    if class_name in _RNN_CLASSES:
        cell = _subgroup(group, "cell", path)
        return weights + (_own_vars(cell, path, context) if cell is not None else [])
    forward = config.get("layer")
    if class_name == "Bidirectional" and isinstance(forward, dict):
        backward = config.get("backward_layer") or forward
        return weights + _child(group, "forward_layer", forward, path, context) \
            + _child(group, "backward_layer", backward, path, context)
    if isinstance(forward, dict) and "class_name" in forward:        # a wrapper
        return weights + _child(group, "layer", forward, path, context)
    layers = _subgroup(group, "layers", path)
    if isinstance(config.get("layers"), list) and layers is not None:    # a nested model
        nested = [e for e in config["layers"] if isinstance(e, dict) and not is_operation(e)]
        return weights + [w for _, ws in _container(
            layers, nested, is_sequential(str(class_name)), path) for w in ws]
    # A class this reader does not know: every variable below it, in name order (gpukb
    # cannot run it, so only its parameter count matters).
    for key in sorted(k for k in group if k != "vars"):
        sub = _subgroup(group, key, path)
        if sub is not None:
            weights += _layer_weights(sub, {}, path, context)
    return weights


def _child(group: Any, attribute: str, entry: dict[str, Any], path: str,
           context: str) -> list[np.ndarray]:
    sub = _subgroup(group, attribute, path)
    return [] if sub is None else _layer_weights(sub, entry, path, f"{context}, {attribute}")


def _own_vars(group: Any, path: str, context: str) -> list[np.ndarray]:
    variables = _subgroup(group, "vars", path)
    if variables is None:
        return []
    keys = list(variables)
    keys.sort(key=lambda k: (0, int(k), "") if k.isdigit() else (1, 0, k))
    return [read_dataset(variables, key, path, context) for key in keys]


def _subgroup(group: Any, name: str, path: str) -> Any:
    """``group[name]`` if it is a group stored in this file, else None; a link to another
    file is refused (Keras refuses them too: ``saving_lib.safe_get_h5_group``)."""
    h5 = h5py()
    link = group.get(name, getlink=True)
    if isinstance(link, h5.ExternalLink):
        raise ModelFileError(
            f"{path!r}: {_WEIGHTS_H5} links {name!r} to another file, which gpukb does not follow")
    sub = group.get(name) if link is not None else None
    return sub if isinstance(sub, h5.Group) else None
