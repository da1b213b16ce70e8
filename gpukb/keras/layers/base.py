"""The base class of gpukb's Keras layers: config and weight checks at load, and the rules by
which Keras calls a layer (which mask it gets, which mask its outputs carry).

A layer is built from a ``LayerSpec`` and the Keras major version that wrote the file; every
check happens then (``UnsupportedLayerError`` for an option gpukb does not implement,
``ModelFileError`` for a config or weights that contradict each other), so that a model never
runs partially. ``infer`` then checks each call of the layer on symbolic tensors (``Sym``: shape
and dtype), and ``call`` computes it on arrays of the model's array library.

Masks travel as in Keras: attached to the tensor object that a layer returns (``_keras_mask``);
here, a table of the model call (``Run``) keyed by the array object. ``invoke`` reproduces
``Layer.__call__`` of the writer's version: Keras 3 ``keras/src/layers/layer.py`` (``__call__``
steps 6 and 7, ``_set_mask_metadata``) and tf.keras 2 ``tf_keras/src/engine/base_layer.py``
(``_get_input_masks``, ``_set_mask_metadata``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from .._errors import ModelFileError, UnsupportedLayerError
from .._spec import LayerSpec

MISSING = object()
FLOAT_DTYPES = ("float32", "float64")

# Config keys that never change what a layer computes at inference.
_IGNORED_KEYS = frozenset({
    "name", "trainable", "dtype", "batch_input_shape", "batch_shape", "input_shape", "batch_size",
    "activity_regularizer", "seed",
})
_IGNORED_SUFFIXES = ("_initializer", "_regularizer", "_constraint")


# --------------------------------------------------------------------------------------------
# Symbolic tensors and nested structures
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Sym:
    """A tensor at load time: its batch shape (None where unknown) and dtype name."""

    shape: tuple
    dtype: str

    @property
    def ndim(self) -> int:
        return len(self.shape)


def is_nested(value: Any) -> bool:
    return isinstance(value, (list, tuple))


def flatten(value: Any) -> list:
    """Leaves of a list/tuple nesting, None included (as Keras's ``tree`` and ``tf.nest``)."""
    if is_nested(value):
        return [leaf for item in value for leaf in flatten(item)]
    return [value]


def map_structure(fn: Callable, value: Any) -> Any:
    if is_nested(value):
        return type(value)(map_structure(fn, item) for item in value)
    return fn(value)


def is_array(value: Any) -> bool:
    return isinstance(value, Sym) or all(hasattr(value, a) for a in ("shape", "dtype", "ndim"))


def shape_text(shape: tuple) -> str:
    return "(" + ", ".join("None" if d is None else str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


# --------------------------------------------------------------------------------------------
# One model call
# --------------------------------------------------------------------------------------------

class Run:
    """What one model call shares between its layers: the array library, the backend for
    ``gpukb.rnn``, the masks attached to tensors, and the recurrent states in and out."""

    def __init__(self, *, xp: Any, backend: Any, rnn_backend: str | None, keras_major: int,
                 library: Any, initial_states: dict, kept_states: dict) -> None:
        self.xp = xp
        self.backend = backend              # the gpukb.Backend object the arrays belong to
        self.rnn_backend = rnn_backend      # the backend= to pass to gpukb.rnn (None: automatic)
        self.keras_major = keras_major
        self.library = library              # cache key of weights converted to this library
        self.initial_states = initial_states  # layer name -> list of state arrays (from predict)
        self.final_states: dict[str, list] = {}
        self.kept_states = kept_states      # stateful layers' states, by layer name
        self._masks: dict[int, tuple[Any, Any]] = {}

    def get_mask(self, x: Any) -> Any:
        entry = self._masks.get(id(x))
        return None if entry is None else entry[1]

    def set_mask(self, x: Any, mask: Any) -> None:
        if x is not None:
            self._masks[id(x)] = (x, mask)  # keeps x alive, so its id is not reused in this call

    def asarray(self, value: Any) -> Any:
        return self.backend.asarray(value)


# --------------------------------------------------------------------------------------------
# The layer base class
# --------------------------------------------------------------------------------------------

class Layer:
    """A Keras layer read from a file. Subclasses set ``call_params`` (the names of the
    parameters of Keras's ``call``, per version), ``supports_masking``, and implement
    ``configure`` (read the config), ``build`` (check weights against the first call's input
    shapes), ``infer`` (output Syms), ``call`` and, where Keras overrides it, ``compute_mask``."""

    is_operation = False   # Keras 3 graph operations (mask arithmetic), not layers
    supports_masking = False
    computes_mask_in_call = False  # tf.keras `_compute_output_and_mask_jointly`
    autocast = True        # cast floating inputs to the layer's dtype (Keras's autocast)
    call_params: dict[int, tuple[str, ...]] = {2: ("inputs",), 3: ("inputs",)}

    def __init__(self, spec: LayerSpec, keras_major: int, *, parent: "Layer | None" = None) -> None:
        self.spec = spec
        self.name = spec.name
        self.class_name = spec.class_name
        self.config = spec.config if isinstance(spec.config, dict) else {}
        self.index = spec.index
        self.keras_major = keras_major
        self.parent = parent
        if not isinstance(spec.config, dict):
            raise ModelFileError(f"{self.where}: its config is not a dict ({type(spec.config).__name__}).")
        self._read: set[str] = set()
        self._weights_by_library: dict[Any, list] = {}
        self.built = False
        self.dtype = self._dtype_option()
        self.configure()
        self._finish_options()
        self.weights: list[np.ndarray] = list(spec.weights)
        for w in self.weights:   # a loaded model's weights are fixed (its cells are frozen):
            if isinstance(w, np.ndarray):   # changing one in place raises, not silently ignored
                w.flags.writeable = False

    # -- error texts --------------------------------------------------------------------------

    @property
    def where(self) -> str:
        if self.parent is not None:
            return f"{self.parent.where}, inner layer {self.name!r} ({self.class_name})"
        return f"layer {self.name!r} ({self.class_name}, position {self.index})"

    def unsupported(self, option: str, value: Any, why: str) -> UnsupportedLayerError:
        return UnsupportedLayerError(f"{self.where}: option {option}={value!r} is not supported: {why}.")

    def file_error(self, text: str) -> ModelFileError:
        return ModelFileError(f"{self.where}: {text}")

    # -- options ------------------------------------------------------------------------------

    def configure(self) -> None:
        """Read every option of the config (subclasses)."""

    def option(self, key: str, default: Any = MISSING, *, kind: Any = None,
               allowed: tuple | None = None, why: str = "") -> Any:
        """The config's ``key`` (``default`` when absent; absent without a default is a
        ModelFileError). ``kind``: a type or tuple of types the value must have (ModelFileError);
        ``allowed``: the values gpukb implements (UnsupportedLayerError, with ``why``)."""
        self._read.add(key)
        if key not in self.config:
            if default is MISSING:
                raise self.file_error(f"its config has no {key!r}.")
            return default
        value = self.config[key]
        if kind is not None:
            kinds = kind if isinstance(kind, tuple) else (kind,)
            wrong_bool = isinstance(value, bool) and bool not in kinds
            if not isinstance(value, kinds) or wrong_bool:
                names = " or ".join("None" if k is type(None) else k.__name__ for k in kinds)
                raise self.file_error(f"option {key}={value!r} should be {names}.")
        if allowed is not None and value not in allowed:
            raise self.unsupported(key, value, why or f"gpukb implements {' or '.join(map(repr, allowed))}")
        return value

    def ignore(self, *keys: str) -> None:
        """Mark options that do not change inference (dropout rates, implementation hints)."""
        self._read.update(keys)

    def _finish_options(self) -> None:
        for key, value in self.config.items():
            if key in self._read or key in _IGNORED_KEYS or key.endswith(_IGNORED_SUFFIXES):
                continue
            raise self.unsupported(key, value, "gpukb does not know this option")

    def _dtype_option(self) -> str:
        self._read.add("dtype")
        dtype = self.config.get("dtype", "float32")
        if dtype is None:
            return "float32"
        if isinstance(dtype, dict):  # a policy the reader left as saved
            dtype = (dtype.get("config") or {}).get("name", dtype)
        if dtype not in FLOAT_DTYPES:
            raise self.unsupported("dtype", dtype, "gpukb runs float32 and float64 layers only "
                                   "(no mixed precision or float16)")
        return dtype

    # -- weights ------------------------------------------------------------------------------

    def check_weights(self, expected: list[tuple[str, tuple[Any, ...]]], why: str = "") -> None:
        """The file's weights must be ``expected`` (name, shape) in order; ModelFileError else."""
        names = ", ".join(name for name, _ in expected) or "none"
        if len(self.weights) != len(expected):
            raise self.file_error(
                f"the config ({why or 'its options'}) needs {len(expected)} weight arrays "
                f"({names}), the file has {len(self.weights)}.")
        for (name, shape), w in zip(expected, self.weights):
            got = tuple(np.shape(w))
            if got != tuple(shape):
                raise self.file_error(
                    f"weight {name!r} has shape {shape_text(got)}, the config "
                    f"({why or 'its options'}) needs {shape_text(tuple(shape))}.")
            if np.asarray(w).dtype.kind != "f":
                raise self.file_error(f"weight {name!r} has dtype {np.asarray(w).dtype}, not a float dtype.")

    def weights_for(self, run: Run) -> list:
        """The weights in the layer's dtype as arrays of the run's library (converted once)."""
        cached = self._weights_by_library.get(run.library)
        if cached is None:
            cached = [run.asarray(np.asarray(w, dtype=self.dtype)) for w in self.weights]
            self._weights_by_library[run.library] = cached
        return cached

    def count_params(self) -> int:
        return int(sum(int(np.prod(np.shape(w))) for w in self.weights))

    def count_non_trainable_params(self) -> int:
        """Parameters Keras does not train (all of them for a layer saved with
        ``trainable=False``; subclasses add their non-trainable weights)."""
        return self.count_params() if self.config.get("trainable", True) is False else 0

    # -- load-time shape checks -----------------------------------------------------------------

    def params(self) -> tuple[str, ...]:
        return self.call_params[self.keras_major]

    def bind(self, args: list, kwargs: dict) -> dict:
        """Keras's binding of a call's arguments to ``call``'s parameters (training dropped)."""
        names = self.params()
        if len(args) > len(names):
            raise self.file_error(f"a node calls it with {len(args)} positional arguments; its call "
                                  f"takes {len(names)} ({', '.join(names)}).")
        bound = dict(zip(names, args))
        for key, value in kwargs.items():
            if key == "training":
                continue  # inference: every layer runs with training=False
            if key not in names:
                raise UnsupportedLayerError(
                    f"{self.where}: a node calls it with the argument {key}={value!r}, which gpukb "
                    f"does not support (its call takes {', '.join(names)}).")
            if key in bound:
                raise self.file_error(f"a node passes {key!r} twice.")
            bound[key] = value
        bound.pop("training", None)
        if names[0] not in bound:
            raise self.file_error("a node calls it without inputs.")
        return bound

    def infer_call(self, bound: dict) -> Any:
        """Output Syms of one call (bound Syms in); builds the layer on its first call."""
        inputs = bound[self.params()[0]]
        extra = {k: v for k, v in bound.items() if k != self.params()[0] and k != "mask"}
        if not self.built:
            self.build(inputs, **extra)
            self.built = True
        return self.infer(inputs, **extra)

    def build(self, inputs: Any, **kwargs: Any) -> None:
        """Check the weights against the first call's input Syms (subclasses)."""
        self.check_weights([])

    def infer(self, inputs: Any, **kwargs: Any) -> Any:
        return Sym(inputs.shape, self.dtype)

    def input_sym(self, inputs: Any, *, min_ndim: int = 1, ndim: int | None = None) -> Sym:
        """``inputs`` as one Sym of an accepted rank (else UnsupportedLayerError)."""
        if not isinstance(inputs, Sym):
            raise UnsupportedLayerError(f"{self.where}: it is called on {len(flatten(inputs))} tensors; "
                                        "it takes one.")
        if (ndim is not None and inputs.ndim != ndim) or inputs.ndim < min_ndim:
            want = f"rank {ndim}" if ndim is not None else f"rank >= {min_ndim}"
            raise UnsupportedLayerError(f"{self.where}: its input has shape {shape_text(inputs.shape)}; "
                                        f"it needs {want}.")
        return inputs

    # -- computing ----------------------------------------------------------------------------

    def call(self, run: Run, inputs: Any, **kwargs: Any) -> Any:
        raise NotImplementedError

    def call_operation(self, run: Run, bound: dict) -> Any:
        """Run a Keras 3 graph operation (``ops.Operation``) on its bound arguments."""
        raise NotImplementedError

    def compute_mask(self, inputs: Any, mask: Any) -> Any:
        """Keras's default: tf.keras returns None unless the layer supports masking (the call
        protocol only asks layers that do); Keras 3 returns the previous mask."""
        return mask

    def cast_inputs(self, run: Run, value: Any) -> Any:
        """Floating arrays in the layer's dtype (Keras's autocast of a layer's inputs); a cast
        array keeps the mask of the original (Keras 3 ``maybe_convert``)."""
        def cast(x):
            if x is None or not hasattr(x, "dtype") or np.dtype(x.dtype).kind != "f":
                return x
            if np.dtype(x.dtype) == np.dtype(self.dtype):
                return x
            y = run.xp.asarray(x, dtype=self.dtype)
            if run.get_mask(x) is not None:
                run.set_mask(y, run.get_mask(x))
            return y
        return map_structure(cast, value)

    def describe(self, backend: str = "cpu") -> str:
        """One line for ``summary``: what runs this layer."""
        return ""

    def __repr__(self) -> str:
        return f"<gpukb.keras layer {self.name!r} ({self.class_name})>"


# --------------------------------------------------------------------------------------------
# Keras's Layer.__call__, per version
# --------------------------------------------------------------------------------------------

def _tensor_argument_names(bound: dict) -> list[str]:
    """Keras 3 ``CallSpec.tensor_arguments_dict``: arguments that are tensors, or non-empty
    nestings of tensors (None allowed)."""
    names = []
    for name, value in bound.items():
        if value is None:
            continue
        if is_array(value):
            names.append(name)
        elif is_nested(value) and len(value) > 0 and all(
                leaf is None or is_array(leaf) for leaf in flatten(value)):
            names.append(name)
    return names


def invoke(layer: Layer, run: Run, bound: dict) -> Any:
    """Call ``layer`` on the arguments ``bound`` (from ``Layer.bind``) as Keras would: fill in
    the mask argument, call, attach the output masks. Returns the outputs."""
    if layer.is_operation:
        return layer.call_operation(run, bound)
    first = layer.params()[0]
    inputs = layer.cast_inputs(run, bound[first]) if layer.autocast else bound[first]
    bound = dict(bound)
    bound[first] = inputs
    if run.keras_major >= 3:
        return _invoke_keras3(layer, run, bound, inputs)
    return _invoke_tf_keras(layer, run, bound, inputs)


def _call(layer: Layer, run: Run, bound: dict, inputs: Any) -> Any:
    first = layer.params()[0]
    kwargs = {k: v for k, v in bound.items() if k != first}
    if "mask" not in layer.params():
        kwargs.pop("mask", None)
    return layer.call(run, inputs, **kwargs)


def _invoke_keras3(layer: Layer, run: Run, bound: dict, inputs: Any) -> Any:
    params = layer.params()
    tensor_args = _tensor_argument_names(bound)
    if len(tensor_args) == 1 and "mask" in params and bound.get("mask") is None:
        bound["mask"] = map_structure(run.get_mask, bound[tensor_args[0]])
    if bound.get("mask") is not None:
        previous_mask = bound["mask"]
    else:
        previous_mask = map_structure(run.get_mask, inputs)
    outputs = _call(layer, run, bound, inputs)
    if layer.supports_masking:
        flat = flatten(outputs)
        if not all(run.get_mask(x) is not None for x in flat):
            masks = layer.compute_mask(inputs, previous_mask)
            if masks is not None:
                for x, mask in zip(flat, flatten(masks)):
                    if run.get_mask(x) is None and mask is not None:
                        run.set_mask(x, mask)
    return outputs


def _invoke_tf_keras(layer: Layer, run: Run, bound: dict, inputs: Any) -> Any:
    expects_mask = "mask" in layer.params()
    if not layer.supports_masking and not expects_mask:
        input_masks = None
    elif "mask" in bound:  # passed explicitly (even as None)
        input_masks = bound["mask"]
    else:
        masks = [run.get_mask(x) for x in flatten(inputs)]
        if all(m is None for m in masks):
            input_masks = None
        else:
            input_masks = _pack_like(inputs, masks)
            if expects_mask:
                bound["mask"] = input_masks
    outputs = _call(layer, run, bound, inputs)
    if layer.supports_masking:
        flat = flatten(outputs)
        done = layer.computes_mask_in_call or all(run.get_mask(x) is not None for x in flat)
        if not done:
            masks = layer.compute_mask(inputs, input_masks)
            if masks is not None:
                for x, mask in zip(flat, flatten(masks)):
                    run.set_mask(x, mask)
    return outputs


def _pack_like(structure: Any, leaves: list) -> Any:
    it = iter(leaves)

    def take(_):
        return next(it)

    return map_structure(take, structure)
