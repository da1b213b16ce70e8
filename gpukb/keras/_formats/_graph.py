"""A model config (the JSON every format stores) as layers, a graph of calls (``NodeSpec``) and
inputs/outputs (``TensorRef``), for both Keras dialects.

Sequential models become a chain of nodes, with an ``InputLayer`` synthesized when the config
has none (Keras <= 2.3 files: from the first layer's ``batch_input_shape``). Functional models:
each entry of ``config["layers"]`` lists the calls of that layer (``inbound_nodes``), in one of
two dialects:

- Keras 3 (``keras/src/models/functional.py``, ``serialize_node``): ``{"args": [...],
  "kwargs": {...}}`` with each tensor a ``{"class_name": "__keras_tensor__", "config":
  {"keras_history": [layer, node_index, tensor_index], ...}}`` dict;
- tf.keras 2 (``tf_keras/src/engine/node.py``, ``Node.serialize``): a nested list of
  ``[layer, node_index, tensor_index, kwargs]`` entries, one per tensor of the first call
  argument; several entries mean the layer was called with a list (``args=[[r1, r2, ...]]``),
  one means ``args=[r]``; the kwargs of the first entry become ``NodeSpec.kwargs`` (tensors in
  them are ``[layer, node_index, tensor_index]`` lists).

Node indices. ``NodeSpec.node_index`` is the position of the call in the layer's saved
``inbound_nodes``, and every ``TensorRef`` uses that numbering. The files do not always: a
nested model that was built from an ``Input`` has a built-in first node that is never saved,
and the saved references count it in tf.keras (nested Functional, and Sequential with an
``InputLayer``: ``_should_skip_first_node`` in ``tf_keras/src/engine/functional.py``) and in
Keras 3's ``input_layers``/``output_layers`` for a nested Functional
(``functional_from_config.get_tensor``), but not in Keras 3's call arguments. The reader
subtracts that node where the writer counted it.

Keras 3 records some graph operations that are not layers (e.g. ``NotEqual`` and ``Any``,
which compute the masks of ``Embedding(mask_zero=True)`` and ``Masking``, whose results reach
the next layers as ``mask=`` arguments). Their ``class_name`` is prefixed with ``"ops."``
(``"ops.NotEqual"``) so they cannot be mistaken for the layer of the same name (``Add``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._errors import ModelFileError
from .._spec import NodeSpec, TensorRef
from ._config import normalise_layer_config, plain_dtype

OPERATION_PREFIX = "ops."
_CONSTANT_VALUE = "_CONSTANT_VALUE"      # tf.keras: a constant in place of a tensor
_FUNCTIONAL_CLASSES = ("Functional", "Model")


@dataclass
class RawLayer:
    """One entry of the model's layer list: ``config`` normalised, ``saved`` as in the file."""

    name: str
    class_name: str
    config: dict[str, Any]
    saved: dict[str, Any]
    is_operation: bool = False


@dataclass
class Graph:
    name: str
    class_name: str
    layers: list[RawLayer]
    nodes: list[NodeSpec]
    inputs: list[TensorRef]
    outputs: list[TensorRef]
    input_shapes: list[tuple[int | None, ...]] = field(default_factory=list)
    input_dtypes: list[str] = field(default_factory=list)


def is_sequential(class_name: str) -> bool:
    return class_name == "Sequential"


def is_functional(entry: dict[str, Any]) -> bool:
    """A Functional model (also a functional-API subclass of ``Model``): it has a graph."""
    config = entry.get("config")
    return entry.get("class_name") in _FUNCTIONAL_CLASSES or (
        isinstance(config, dict) and "input_layers" in config
        and not is_sequential(str(entry.get("class_name"))))


def saved_name(entry: dict[str, Any]) -> Any:
    name = entry.get("name")
    if name is None and isinstance(entry.get("config"), dict):
        name = entry["config"].get("name")
    return name


def parse_graph(root: Any, *, keras_major: int, path: str,
                is_operation: Callable[[dict[str, Any]], bool]) -> Graph:
    """The model ``root`` (``{"class_name": ..., "config": {...}}``) as a ``Graph``."""
    if not isinstance(root, dict) or not isinstance(root.get("config"), dict) \
            or not isinstance(root.get("class_name"), str):
        raise ModelFileError(f"{path!r}: the model config is not a serialized Keras model")
    class_name = root["class_name"]
    config = root["config"]
    if not isinstance(config.get("layers"), list):
        raise ModelFileError(
            f"{path!r}: the model (class {class_name!r}) has no list of layers in its config: "
            f"a subclassed model stores its structure as Python code, which gpukb cannot run; "
            f"save a Sequential or Functional model")
    layers = _raw_layers(config["layers"], path, is_operation)
    name = str(config.get("name", ""))
    if is_sequential(class_name):
        return _sequential(name, class_name, config, layers, keras_major, path)
    if not is_functional(root):
        raise ModelFileError(
            f"{path!r}: the model class {class_name!r} is neither Sequential nor Functional")
    return _functional(name, class_name, config, layers, keras_major, path)


def _raw_layers(entries: list[Any], path: str,
                is_operation: Callable[[dict[str, Any]], bool]) -> list[RawLayer]:
    layers: list[RawLayer] = []
    seen: set[str] = set()
    for position, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("class_name"), str) \
                or not isinstance(entry.get("config"), dict):
            raise ModelFileError(
                f"{path!r}: layer entry {position} of the model config is not a serialized "
                f"layer (expected a dict with 'class_name' and 'config')")
        name = saved_name(entry)
        if not isinstance(name, str) or not name:
            raise ModelFileError(f"{path!r}: layer entry {position} has no name")
        if name in seen:
            raise ModelFileError(f"{path!r}: two layers are named {name!r}")
        seen.add(name)
        operation = is_operation(entry)
        class_name = (OPERATION_PREFIX if operation else "") + entry["class_name"]
        layers.append(RawLayer(name, class_name, normalise_layer_config(entry["config"]),
                               entry, operation))
    return layers


# --------------------------------------------------------------------------------------------
# Sequential
# --------------------------------------------------------------------------------------------

def _sequential(name: str, class_name: str, config: dict[str, Any], layers: list[RawLayer],
                keras_major: int, path: str) -> Graph:
    if not layers:
        raise ModelFileError(f"{path!r}: the Sequential model {name!r} has no layers")
    if layers[0].class_name != "InputLayer":
        layers.insert(0, _synthesized_input(config, layers, keras_major, path))
    nodes = []
    previous = TensorRef(layers[0].name)
    for layer in layers[1:]:
        if layer.class_name == "InputLayer":
            continue     # Keras skips a second InputLayer (it cannot be added, only loaded)
        nodes.append(NodeSpec(layer.name, 0, [previous], {}))
        previous = TensorRef(layer.name)
    shape, dtype = _input_signature(layers[0], path)
    return Graph(name, class_name, layers, nodes, [TensorRef(layers[0].name)], [previous],
                 [shape], [dtype])


def _synthesized_input(config: dict[str, Any], layers: list[RawLayer], keras_major: int,
                       path: str) -> RawLayer:
    """The ``InputLayer`` Keras creates when it builds a Sequential model whose config has none
    (``Sequential.add`` / ``from_config`` in tf_keras and Keras 3)."""
    first = layers[0]
    shape = first.config.get("batch_input_shape", first.config.get("batch_shape"))
    if shape is None:
        shape = config.get("build_input_shape")
    if shape is None and isinstance(first.saved.get("build_config"), dict):
        shape = first.saved["build_config"].get("input_shape")
    if not isinstance(shape, list):
        raise ModelFileError(
            f"{path!r}: the Sequential model has no InputLayer and records no input shape "
            f"(it was saved before it was built); build it (model.build or a first call) "
            f"and save it again")
    dtype = first.config.get("dtype") if keras_major < 3 else "float32"
    if not isinstance(dtype, str):
        dtype = "float32"
    taken = {layer.name for layer in layers}
    base = f"{first.name}_input" if keras_major < 3 else "input_layer"
    input_name, k = base, 0
    while input_name in taken:
        k += 1
        input_name = f"{base}_{k}"
    shape_key = "batch_input_shape" if keras_major < 3 else "batch_shape"
    synthesized = {shape_key: list(shape), "dtype": dtype, "sparse": False, "ragged": False,
                   "name": input_name}
    return RawLayer(input_name, "InputLayer", synthesized,
                    {"class_name": "InputLayer", "config": synthesized})


def _input_signature(layer: RawLayer, path: str) -> tuple[tuple[int | None, ...], str]:
    shape = layer.config.get("batch_shape", layer.config.get("batch_input_shape"))
    if not isinstance(shape, list) or not all(
            d is None or (isinstance(d, int) and not isinstance(d, bool) and d >= 0)
            for d in shape):
        raise ModelFileError(
            f"{path!r}: InputLayer {layer.name!r} records no valid batch shape (got {shape!r})")
    dtype = plain_dtype(layer.config.get("dtype", "float32"))
    return tuple(shape), dtype if isinstance(dtype, str) else "float32"


# --------------------------------------------------------------------------------------------
# Functional
# --------------------------------------------------------------------------------------------

def _has_builtin_node(entry: dict[str, Any], keras_major: int, where: str) -> bool:
    """Whether the references ``where`` ("call" or "io") count a nested model's unsaved
    built-in first node (see the module docstring)."""
    if keras_major >= 3 and where == "call":
        return False
    if is_functional(entry):
        return True
    if keras_major >= 3 or not is_sequential(str(entry.get("class_name"))):
        return False
    inner = entry["config"].get("layers")
    return bool(inner) and isinstance(inner[0], dict) and inner[0].get("class_name") == "InputLayer"


class _Refs:
    """Turns saved tensor references into ``TensorRef``s with the reader's node numbering."""

    def __init__(self, layers: list[RawLayer], keras_major: int, path: str) -> None:
        self.by_name = {layer.name: layer for layer in layers}
        self.keras_major = keras_major
        self.path = path

    def make(self, history: Any, where: str, context: str) -> TensorRef:
        if not (isinstance(history, (list, tuple)) and len(history) >= 3
                and isinstance(history[0], str)
                and all(isinstance(i, int) and not isinstance(i, bool) for i in history[1:3])):
            raise ModelFileError(
                f"{self.path!r}: {context} holds a malformed tensor reference {history!r} "
                f"(expected [layer_name, node_index, tensor_index])")
        name, node_index, tensor_index = history[0], history[1], history[2]
        layer = self.by_name.get(name)
        if layer is None:
            raise ModelFileError(f"{self.path!r}: {context} refers to an unknown layer {name!r}")
        if _has_builtin_node(layer.saved, self.keras_major, where):
            node_index -= 1
        return TensorRef(name, node_index, tensor_index)


def _functional(name: str, class_name: str, config: dict[str, Any], layers: list[RawLayer],
                keras_major: int, path: str) -> Graph:
    refs = _Refs(layers, keras_major, path)
    calls: dict[str, list[NodeSpec]] = {}
    for layer in layers:
        inbound = layer.saved.get("inbound_nodes", [])
        if not isinstance(inbound, list):
            raise ModelFileError(f"{path!r}: layer {layer.name!r} has malformed inbound_nodes")
        calls[layer.name] = [
            _node(layer.name, i, data, refs, f"call {i} of layer {layer.name!r}")
            for i, data in enumerate(inbound)]
    inputs = [refs.make(leaf, "io", "the model's input_layers")
              for leaf in _flatten_refs(config.get("input_layers"))]
    outputs = [refs.make(leaf, "io", "the model's output_layers")
               for leaf in _flatten_refs(config.get("output_layers"))]
    if not inputs or not outputs:
        raise ModelFileError(f"{path!r}: the Functional model lists no inputs or no outputs")
    kinds = {layer.name: layer.class_name for layer in layers}
    for ref in inputs:
        if kinds[ref.layer] != "InputLayer" or ref.node_index != 0:
            raise ModelFileError(
                f"{path!r}: model input {ref} is not the output of an InputLayer")
    for ref in outputs:
        _check_ref(ref, kinds, calls, path, "the model's output_layers")
    nodes = _in_dependency_order(layers, calls, kinds, path)
    signature = [_input_signature(refs.by_name[ref.layer], path) for ref in inputs]
    return Graph(name, class_name, layers, nodes, inputs, outputs,
                 [s for s, _ in signature], [d for _, d in signature])


def _is_leaf(value: Any) -> bool:
    """tf.keras node data ``[layer, node_index, tensor_index(, kwargs)]``
    (``tf_utils.convert_inner_node_data._is_serialized_node_data``)."""
    return isinstance(value, list) and len(value) in (3, 4) and isinstance(value[0], str)


def _flatten_refs(value: Any) -> list[Any]:
    """The leaves of input_layers / output_layers in Keras's order (dicts by sorted key, as
    ``tree.flatten`` / ``tf.nest.flatten``)."""
    if _is_leaf(value):
        return [value]
    if isinstance(value, dict):
        return [leaf for key in sorted(value) for leaf in _flatten_refs(value[key])]
    if isinstance(value, list):
        return [leaf for item in value for leaf in _flatten_refs(item)]
    return []


def _node(layer: str, index: int, data: Any, refs: _Refs, context: str) -> NodeSpec:
    if isinstance(data, dict):
        args = data.get("args", [])
        kwargs = data.get("kwargs", {})
        if not isinstance(args, list) or not isinstance(kwargs, dict):
            raise ModelFileError(f"{refs.path!r}: {context} has malformed args/kwargs")
        return NodeSpec(layer, index, _decode_v3(args, refs, context),
                        _decode_v3(kwargs, refs, context))
    if isinstance(data, list):
        return _node_v2(layer, index, data, refs, context)
    raise ModelFileError(f"{refs.path!r}: {context} is neither a Keras 3 nor a tf.keras node")


def _decode_v3(value: Any, refs: _Refs, context: str) -> Any:
    """Keras 3 serialized call arguments (``serialization_lib.serialize_keras_object``) as
    plain values, tensors as ``TensorRef``; other serialized objects stay opaque dicts."""
    if isinstance(value, list):
        return [_decode_v3(v, refs, context) for v in value]
    if not isinstance(value, dict):
        return value
    kind = value.get("class_name")
    inner = value.get("config")
    if kind == "__keras_tensor__" and isinstance(inner, dict):
        return refs.make(inner.get("keras_history"), "call", context)
    if kind in ("__numpy__", "__tensor__") and isinstance(inner, dict):
        try:
            return np.asarray(inner["value"], dtype=np.dtype(inner["dtype"]))
        except (KeyError, TypeError, ValueError) as e:
            raise ModelFileError(
                f"{refs.path!r}: {context} holds a malformed constant array ({e})") from e
    if kind == "__bytes__" and isinstance(inner, dict) and isinstance(inner.get("value"), str):
        return inner["value"].encode("utf-8")
    if kind == "__ellipsis__":
        return Ellipsis
    if kind == "__slice__" and isinstance(inner, dict):
        return slice(*(_decode_v3(inner.get(k), refs, context) for k in ("start", "stop", "step")))
    if isinstance(kind, str) and "config" in value:
        return value                   # another serialized object (e.g. "__lambda__"): opaque
    return {k: _decode_v3(v, refs, context) for k, v in value.items()}


def _node_v2(layer: str, index: int, data: list[Any], refs: _Refs, context: str) -> NodeSpec:
    leaves: list[Any] = []        # the saved entries
    converted: list[Any] = []     # each as a TensorRef (or the constant it holds)

    def convert(value: Any) -> Any:
        if _is_leaf(value):
            leaves.append(value)
            tensor = value[2] if value[0] == _CONSTANT_VALUE else refs.make(value, "call", context)
            converted.append(tensor)
            return tensor
        if isinstance(value, dict):
            return {k: convert(v) for k, v in value.items()}
        if isinstance(value, list):
            return [convert(v) for v in value]
        raise ModelFileError(f"{refs.path!r}: {context} holds malformed node data {value!r}")

    structure = convert(data)
    if not leaves:
        raise ModelFileError(f"{refs.path!r}: {context} has no input tensors")
    first = leaves[0]
    kwargs = first[3] if len(first) == 4 else {}
    if not isinstance(kwargs, dict):
        raise ModelFileError(f"{refs.path!r}: {context} has malformed call kwargs {kwargs!r}")
    # One tensor: the layer was called on it alone (``unnest_if_single_tensor``: a dict stays).
    single = len(leaves) == 1 and not isinstance(structure, dict)
    args = [converted[0]] if single else [structure]
    return NodeSpec(layer, index, args, _decode_v2_kwargs(kwargs, refs, context))


def _decode_v2_kwargs(value: Any, refs: _Refs, context: str) -> Any:
    """tf.keras call kwargs: tensors are ``[layer, node_index, tensor_index]`` lists
    (``functional.reconstruct_from_config._deserialize_keras_tensors``)."""
    if _is_leaf(value):
        return refs.make(value, "call", context)
    if isinstance(value, list):
        return [_decode_v2_kwargs(v, refs, context) for v in value]
    if isinstance(value, dict):
        return {k: _decode_v2_kwargs(v, refs, context) for k, v in value.items()}
    return value


def _refs_in(value: Any) -> list[TensorRef]:
    if isinstance(value, TensorRef):
        return [value]
    if isinstance(value, (list, tuple)):
        return [r for v in value for r in _refs_in(v)]
    if isinstance(value, dict):
        return [r for v in value.values() for r in _refs_in(v)]
    return []


def _check_ref(ref: TensorRef, kinds: dict[str, str], calls: dict[str, list[NodeSpec]],
               path: str, context: str) -> None:
    count = 1 if kinds[ref.layer] == "InputLayer" else len(calls[ref.layer])
    if not 0 <= ref.node_index < count or ref.tensor_index < 0:
        raise ModelFileError(
            f"{path!r}: {context} refers to call {ref.node_index} of layer {ref.layer!r} "
            f"(output {ref.tensor_index}), which the config does not have")


def _in_dependency_order(layers: list[RawLayer], calls: dict[str, list[NodeSpec]],
                         kinds: dict[str, str], path: str) -> list[NodeSpec]:
    """All nodes, each after the nodes it reads: repeated passes over the layers in config
    order, each layer's calls in their order (as ``functional_from_config`` processes them)."""
    for layer_calls in calls.values():
        for node in layer_calls:
            for ref in _refs_in([node.args, node.kwargs]):
                _check_ref(ref, kinds, calls, path,
                           f"call {node.node_index} of layer {node.layer!r}")
    done: set[tuple[str, int]] = set()
    pending = {name: list(layer_calls) for name, layer_calls in calls.items() if layer_calls}
    ordered: list[NodeSpec] = []
    while pending:
        progress = False
        for layer in layers:
            queue = pending.get(layer.name)
            while queue and all(kinds[r.layer] == "InputLayer" or (r.layer, r.node_index) in done
                                for r in _refs_in([queue[0].args, queue[0].kwargs])):
                node = queue.pop(0)
                ordered.append(node)
                done.add((node.layer, node.node_index))
                progress = True
            if queue == []:
                del pending[layer.name]
        if not progress:
            stuck = ", ".join(f"{name!r}" for name in pending)
            raise ModelFileError(
                f"{path!r}: the model graph has a cycle or calls that depend on each other; "
                f"the calls of {stuck} can never run")
    return ordered
