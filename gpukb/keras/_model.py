"""``Model``: runs a ``ModelSpec`` (a Keras model read from a file) on NumPy or CuPy arrays.

Load time builds every layer and checks every call of the graph on symbolic tensors (shapes,
weights, options), so a model that loads never stops half-way on its own account; a call checks
its inputs (and states) before any layer runs. A call executes the nodes in the spec's order, on
the array library of its inputs (the ``gpukb.rnn`` dispatcher's choice of backend: NumPy -> cpu,
CuPy -> cuda, or the model's ``backend``), with masks attached to tensors as Keras does
(``layers.base.invoke``).

Recurrent states (``predict(initial_states=..., return_states=True)``): a dict from the name of
each top-level recurrent layer (LSTM, GRU, SimpleRNN, Bidirectional) to the list of its state
arrays, in Keras order (LSTM ``[h, c]``; Bidirectional forward then backward states), each
``(batch, units)``. ``return_states`` gives every recurrent layer's final states; feeding them
back as ``initial_states`` with the next chunk of a stream continues the stream exactly (as a
Keras ``stateful`` layer does between calls). Only forward layers can continue a stream, so
``initial_states`` for a ``go_backwards`` layer or a ``Bidirectional`` is a ValueError.
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np

from ._errors import ModelFileError
from ._spec import ModelSpec, TensorRef
from .layers import Layer, Run, Sym, build_layer, invoke
from .layers.base import flatten, shape_text
from .layers.embedding import Embedding
from .layers.recurrent import Recurrent
from .layers.wrappers import Bidirectional


def _walk(value: Any) -> Iterator[Any]:
    """Every leaf of a node's args/kwargs (lists, tuples, dicts)."""
    if isinstance(value, dict):
        for item in value.values():
            yield from _walk(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _walk(item)
    else:
        yield value


def _resolve(value: Any, lookup) -> Any:
    if isinstance(value, TensorRef):
        return lookup(value)
    if isinstance(value, dict):
        return {k: _resolve(v, lookup) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_resolve(v, lookup) for v in value)
    return value


def _library(x: Any) -> str:
    return type(x).__module__.split(".")[0]


class Model:
    """A Keras model read from a file, run with gpukb (see ``gpukb.keras.load_model``)."""

    def __init__(self, spec: ModelSpec, *, backend: str | None = None) -> None:
        if not isinstance(spec, ModelSpec):
            raise TypeError(f"Model takes a gpukb.keras ModelSpec, not {type(spec).__name__}.")
        if spec.keras_major not in (2, 3):
            raise ModelFileError(f"model {spec.name!r}: unknown Keras major version {spec.keras_major!r}.")
        self.spec = spec
        self.name = spec.name
        self.keras_major = spec.keras_major
        self.backend = backend
        self._layers: dict[str, Layer] = {
            name: build_layer(layer_spec, spec.keras_major) for name, layer_spec in spec.layers.items()}
        self._kept_states: dict[str, list] = {}
        self._check_graph()

    # -- load time ----------------------------------------------------------------------------

    @property
    def backend(self) -> str | None:
        """The backend that runs this model (None: chosen by the inputs' array type, as
        ``gpukb.rnn`` does); a backend name, checked when set."""
        return self._backend

    @backend.setter
    def backend(self, name: str | None) -> None:
        if name is not None:
            from .. import _dispatch

            if not isinstance(name, str):
                raise TypeError(f"backend must be a backend name (str) or None, not {type(name).__name__}.")
            _dispatch.get_backend(name, check_available=False)  # ValueError for unknown names
        self._backend = name

    def _layer(self, name: str) -> Layer:
        layer = self._layers.get(name)
        if layer is None:
            raise ModelFileError(f"model {self.name!r}: the graph refers to a layer {name!r} that the "
                                 "model does not have.")
        return layer

    def _check_graph(self) -> None:
        """Shapes of every tensor (checks each call of each layer), the inputs and outputs."""
        spec = self.spec
        if not spec.inputs or not spec.outputs:
            raise ModelFileError(f"model {self.name!r} has no inputs or no outputs.")
        self._input_syms: list[Sym] = []
        syms: dict[tuple[str, int], list] = {}
        for i, ref in enumerate(spec.inputs):
            sym = self._input_sym(i, ref)
            self._input_syms.append(sym)
            syms[(ref.layer, ref.node_index)] = [sym]
        self._nodes: list[tuple[Layer, Any]] = []
        self._node_syms: dict[tuple[str, int], Any] = {}
        self._calls: dict[str, int] = {}
        for node in spec.nodes:
            layer = self._layer(node.layer)
            if layer.class_name == "InputLayer" and not layer.is_operation:
                continue
            key = (node.layer, node.node_index)

            def lookup(ref: TensorRef) -> Any:
                outputs = syms.get((ref.layer, ref.node_index))
                if outputs is None or not 0 <= ref.tensor_index < len(outputs):
                    raise ModelFileError(f"model {self.name!r}: layer {node.layer!r} reads tensor "
                                         f"{tuple(vars(ref).values())}, which no earlier node makes.")
                return outputs[ref.tensor_index]

            bound = layer.bind(_resolve(list(node.args), lookup), _resolve(dict(node.kwargs), lookup))
            out = layer.infer_call(bound)
            syms[key] = flatten(out)
            self._node_syms[key] = out
            self._nodes.append((layer, node))
            self._calls[node.layer] = self._calls.get(node.layer, 0) + 1
        self._output_syms = []
        for ref in spec.outputs:
            outputs = syms.get((ref.layer, ref.node_index))
            if outputs is None or not 0 <= ref.tensor_index < len(outputs):
                raise ModelFileError(f"model {self.name!r}: output {tuple(vars(ref).values())} is not made "
                                     "by any node.")
            self._output_syms.append(outputs[ref.tensor_index])
        self._embedding_feeds = self._inputs_feeding_embeddings()
        self._graph_states = {layer.name for layer, node in self._nodes
                              if isinstance(layer, (Recurrent, Bidirectional)) and _has_graph_states(node)}

    def _input_sym(self, i: int, ref: TensorRef) -> Sym:
        spec = self.spec
        shape = spec.input_shapes[i] if i < len(spec.input_shapes) else None
        dtype = spec.input_dtypes[i] if i < len(spec.input_dtypes) else None
        layer = self._layers.get(ref.layer)
        config = layer.config if layer is not None else {}
        if shape is None:
            shape = config.get("batch_shape") or config.get("batch_input_shape")
        if shape is None:
            raise ModelFileError(f"model {self.name!r}: input {ref.layer!r} has no recorded shape.")
        dtype = dtype or config.get("dtype") or "float32"
        if not isinstance(dtype, str):
            dtype = "float32"
        try:
            np_dtype = np.dtype(dtype)
        except TypeError:
            raise ModelFileError(f"model {self.name!r}: input {ref.layer!r} has an unknown dtype {dtype!r}.") from None
        if np_dtype.kind not in "fiu":
            raise ModelFileError(f"model {self.name!r}: input {ref.layer!r} has dtype {dtype}; gpukb takes "
                                 "float and integer inputs.")
        return Sym(tuple(None if d is None else int(d) for d in shape), dtype)

    def _inputs_feeding_embeddings(self) -> dict[int, list[Embedding]]:
        """Model input index -> the Embedding layers that read it directly (their ids are
        checked before the model runs)."""
        feeds: dict[int, list[Embedding]] = {}
        positions = {(ref.layer, ref.node_index, ref.tensor_index): i for i, ref in enumerate(self.spec.inputs)}
        for layer, node in self._nodes:
            if isinstance(layer, Embedding):
                for leaf in _walk(node.args):
                    if isinstance(leaf, TensorRef):
                        i = positions.get((leaf.layer, leaf.node_index, leaf.tensor_index))
                        if i is not None:
                            feeds.setdefault(i, []).append(layer)
        return feeds

    # -- public API ---------------------------------------------------------------------------

    @property
    def layers(self) -> list[Layer]:
        """The layers, in the model's order (each with ``.name``, ``.class_name``, ``.config``,
        ``.weights``, ``count_params()``): as Keras's ``model.layers``, without the InputLayer of
        a Sequential model and without Keras 3's mask operations."""
        sequential = self.spec.class_name == "Sequential"
        return [layer for layer in self._layers.values() if not layer.is_operation
                and not (sequential and layer.class_name == "InputLayer")]

    def get_layer(self, name: str) -> Layer:
        if name not in self._layers or self._layers[name].is_operation:
            raise ValueError(f"model {self.name!r} has no layer {name!r}; its layers: "
                             + ", ".join(layer.name for layer in self.layers) + ".")
        return self._layers[name]

    @property
    def input_names(self) -> list[str]:
        return [ref.layer for ref in self.spec.inputs]

    @property
    def input_shapes(self) -> list[tuple]:
        return [sym.shape for sym in self._input_syms]

    @property
    def output_shapes(self) -> list[tuple]:
        return [sym.shape for sym in self._output_syms]

    def count_params(self) -> int:
        return sum(layer.count_params() for layer in self.layers)

    def reset_states(self) -> None:
        """Zero the states that stateful recurrent layers keep between calls."""
        self._kept_states.clear()

    def summary(self, print_fn=None, *, backend: str | None = None) -> None:
        """Print a Keras-like table: layers, output shapes, parameter counts, and what runs each
        recurrent layer on ``backend`` (default: the model's backend, else ``cpu``)."""
        from ._summary import summary_lines

        for line in summary_lines(self, backend or self.backend or "cpu"):
            (print_fn or print)(line)

    def __call__(self, x: Any) -> Any:
        """``predict(x)`` in one batch."""
        return self.predict(x)

    def predict(self, x: Any, batch_size: int | None = None, initial_states: dict | None = None,
                return_states: bool = False) -> Any:
        """Outputs for inputs ``x`` (an array, a list in Keras's input order, or a dict by input
        name): one array, or a list in Keras's output order. ``batch_size``: run in batches of
        that many samples (None: all at once). With ``return_states``, returns
        ``(outputs, states)`` (see the module docstring)."""
        if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int)
                                       or batch_size <= 0):
            raise ValueError(f"batch_size must be a positive int or None, got {batch_size!r}.")
        if not isinstance(return_states, bool):
            raise TypeError(f"return_states must be True or False, got {return_states!r}.")
        inputs = self._standardize_inputs(x)
        backend = self._select_backend(inputs, initial_states)
        xp = backend.namespace(inputs)
        inputs = self._checked_inputs(inputs, xp)
        n = int(inputs[0].shape[0])
        states = self._checked_states(initial_states, n, backend, return_states)
        stateful_given = {name: s for name, s in states.items() if self._is_stateful(name)}
        per_sample = {name: s for name, s in states.items() if name not in stateful_given}
        self._kept_states.update(stateful_given)
        size = n if batch_size is None else batch_size
        batches = []
        for start in range(0, n, size):
            stop = min(start + size, n)
            run = Run(xp=xp, backend=backend, rnn_backend=self.backend, keras_major=self.keras_major,
                      library=(xp.__name__, str(getattr(inputs[0], "device", ""))),
                      initial_states={k: [s[start:stop] for s in v] for k, v in per_sample.items()},
                      kept_states=self._kept_states)
            outputs = self._run([a[start:stop] for a in inputs], run)
            batches.append((outputs, run.final_states))
        outputs = [batches[0][0][i] if len(batches) == 1 else
                   xp.concatenate([b[0][i] for b in batches], axis=0)
                   for i in range(len(self.spec.outputs))]
        result = outputs[0] if len(outputs) == 1 else outputs
        if not return_states:
            return result
        return result, self._final_states(batches, xp)

    # -- running ------------------------------------------------------------------------------

    def _run(self, inputs: list, run: Run) -> list:
        values: dict[tuple[str, int], list] = {}
        for ref, array in zip(self.spec.inputs, inputs):
            values[(ref.layer, ref.node_index)] = [array]

        def lookup(ref: TensorRef) -> Any:
            return values[(ref.layer, ref.node_index)][ref.tensor_index]

        for layer, node in self._nodes:
            bound = layer.bind(_resolve(list(node.args), lookup), _resolve(dict(node.kwargs), lookup))
            values[(node.layer, node.node_index)] = flatten(invoke(layer, run, bound))
        return [lookup(ref) for ref in self.spec.outputs]

    def _final_states(self, batches: list, xp: Any) -> dict:
        names = [layer.name for layer in self.layers if isinstance(layer, (Recurrent, Bidirectional))]
        result = {}
        for name in names:
            if self._is_stateful(name) or len(batches) == 1:
                result[name] = list(batches[-1][1][name])
            else:
                parts = [b[1][name] for b in batches]
                result[name] = [xp.concatenate([p[i] for p in parts], axis=0) for i in range(len(parts[0]))]
        return result

    def _is_stateful(self, name: str) -> bool:
        return bool(getattr(self._layers.get(name), "stateful", False))

    # -- input checks -------------------------------------------------------------------------

    def _standardize_inputs(self, x: Any) -> list:
        names = self.input_names
        if isinstance(x, dict):
            unknown = sorted(set(x) - set(names))
            missing = [n for n in names if n not in x]
            if unknown or missing:
                raise ValueError(f"model {self.name!r} takes the inputs {names}; the dict has "
                                 f"{sorted(x)} (missing {missing}, unknown {unknown}).")
            x = [x[n] for n in names]
        elif isinstance(x, (list, tuple)) and len(names) > 1:
            x = list(x)
        else:
            x = [x]
        if len(x) != len(names):
            raise ValueError(f"model {self.name!r} takes {len(names)} inputs ({', '.join(names)}); "
                             f"got {len(x)}.")
        converted = []
        for name, value in zip(names, x):
            if not all(hasattr(value, a) for a in ("shape", "dtype", "ndim")):
                try:
                    value = np.asarray(value)
                except (TypeError, ValueError) as error:
                    raise TypeError(f"input {name!r} is a {type(value).__name__}, not an array: {error}") from None
            converted.append(value)
        return converted

    def _select_backend(self, inputs: list, initial_states: Any) -> Any:
        from .. import _dispatch

        leaves = list(inputs)
        if isinstance(initial_states, dict):
            leaves += [s for v in initial_states.values() if isinstance(v, (list, tuple)) for s in v]
        libraries = {_library(a) for a in leaves if hasattr(a, "shape")}
        if len(libraries) > 1:
            raise TypeError(f"model {self.name!r}: the inputs and states mix array libraries "
                            f"({', '.join(sorted(libraries))}); convert them to one.")
        return _dispatch.select_backend(leaves, self.backend)

    def _checked_inputs(self, inputs: list, xp: Any) -> list:
        batch = None
        checked = []
        for i, (array, sym, name) in enumerate(zip(inputs, self._input_syms, self.input_names)):
            shape = tuple(int(d) for d in array.shape)
            if len(shape) != sym.ndim or any(e is not None and d != e for d, e in zip(shape[1:], sym.shape[1:])):
                raise ValueError(f"input {name!r} must have shape {shape_text(sym.shape)} (None: any size); "
                                 f"got {shape_text(shape)}.")
            if batch is None:
                batch = shape[0]
            elif shape[0] != batch:
                raise ValueError(f"the inputs must have one batch size; input {name!r} has {shape[0]}, "
                                 f"input {self.input_names[0]!r} has {batch}.")
            if shape[0] == 0:
                raise ValueError(f"input {name!r} is empty (batch size 0).")
            kind = np.dtype(array.dtype).kind
            if kind not in "biuf":
                raise TypeError(f"input {name!r} has dtype {array.dtype}; the model takes numbers "
                                f"({sym.dtype}).")
            want = np.dtype(sym.dtype)
            if i in self._embedding_feeds or want.kind in "iu":
                host = array.get() if hasattr(array, "get") else np.asarray(array)
                for embedding in self._embedding_feeds.get(i, []):
                    embedding.check_ids(name, host)
                if want.kind in "iu" and kind == "f" and not np.all(host == np.floor(host)):
                    raise ValueError(f"input {name!r} takes integers ({sym.dtype}); it has fractional values.")
            if array.dtype != want:
                array = xp.asarray(array, dtype=want)
            checked.append(array)
        return checked

    def _checked_states(self, initial_states: Any, n: int, backend: Any, return_states: bool) -> dict:
        shared = sorted(name for name, count in self._calls.items() if count > 1
                        and isinstance(self._layers[name], (Recurrent, Bidirectional)))
        if (initial_states or return_states) and shared:
            raise ValueError(f"model {self.name!r}: the recurrent layer(s) {shared} are called more than "
                             "once, so their states are ambiguous; initial_states and return_states "
                             "are not supported for this model.")
        if initial_states is None:
            return {}
        if not isinstance(initial_states, dict):
            raise TypeError("initial_states must be a dict {recurrent layer name: [state arrays]}, not "
                            f"{type(initial_states).__name__}.")
        recurrent = [layer.name for layer in self.layers if isinstance(layer, (Recurrent, Bidirectional))]
        checked = {}
        for name, states in initial_states.items():
            layer = self._layers.get(name)
            if name not in recurrent or not isinstance(layer, (Recurrent, Bidirectional)):
                raise ValueError(f"initial_states: {name!r} is not a recurrent layer of model {self.name!r} "
                                 f"(its recurrent layers: {recurrent}).")
            if isinstance(layer, Bidirectional) or layer.go_backwards:
                raise ValueError(f"initial_states: layer {name!r} reads its sequence backwards "
                                 f"({layer.class_name}{', go_backwards' if not isinstance(layer, Bidirectional) else ''}); "
                                 "carrying states across chunks only works for forward layers.")
            if name in self._graph_states:
                raise ValueError(f"initial_states: layer {name!r} already gets its initial state from the "
                                 "model's graph.")
            if not isinstance(states, (list, tuple)) or len(states) != layer.n_states:
                raise ValueError(f"initial_states[{name!r}] must be a list of {layer.n_states} arrays "
                                 f"({'[h, c]' if layer.n_states == 2 else '[h]'}).")
            rows = layer.batch_size if layer.stateful else n
            arrays = []
            for j, s in enumerate(states):
                if not hasattr(s, "shape"):
                    s = np.asarray(s)
                if tuple(s.shape) != (rows, layer.units) or np.dtype(s.dtype).kind not in "fiu":
                    raise ValueError(f"initial_states[{name!r}][{j}] must be a numeric array of shape "
                                     f"({rows}, {layer.units}); got {s.dtype} {shape_text(tuple(s.shape))}.")
                arrays.append(backend.namespace([s]).asarray(s, dtype=layer.dtype))
            checked[name] = arrays
        return checked

    def __repr__(self) -> str:
        return (f"<gpukb.keras.Model {self.name!r}: {len(self.layers)} layers, "
                f"{len(self.spec.inputs)} input(s), {len(self.spec.outputs)} output(s), Keras {self.spec.keras_version}>")


def _has_graph_states(node: Any) -> bool:
    """Whether a recurrent layer's node gets initial states from the graph (Keras 3
    ``initial_state`` argument, or tf.keras extra tensors in a list input)."""
    if node.kwargs.get("initial_state") is not None:
        return True
    first = node.args[0] if node.args else None
    return isinstance(first, list) and len(first) > 1
