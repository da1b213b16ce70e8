"""InputLayer, Dense, Activation, the layers that are identities at inference (Dropout,
SpatialDropout1D, GaussianNoise, GaussianDropout), Flatten and Reshape.

Sources: Keras 3 ``keras/src/layers/core/{input_layer,dense}.py``,
``keras/src/layers/activations/activation.py``, ``keras/src/layers/regularization/*.py``,
``keras/src/layers/reshaping/{flatten,reshape}.py``; tf.keras 2 ``tf_keras/src/layers/core/*.py``,
``tf_keras/src/layers/regularization/*.py``, ``tf_keras/src/layers/reshaping/*.py``.
"""

from __future__ import annotations

import math
from typing import Any, Callable

from . import activations
from .base import MISSING, Layer, Run, Sym, shape_text


class InputLayer(Layer):
    """A model input: no computation. Its shape and dtype are checked by the model."""

    def configure(self) -> None:
        self.ignore("batch_shape", "batch_input_shape", "optional")
        self.option("sparse", False, allowed=(False, None), why="gpukb takes dense arrays")
        self.option("ragged", False, allowed=(False, None), why="gpukb takes dense arrays")

    def _dtype_option(self) -> str:
        # An input may be integer (token ids), unlike a computing layer.
        self._read.add("dtype")
        dtype = self.config.get("dtype") or "float32"
        return dtype if isinstance(dtype, str) else "float32"


class Dense(Layer):
    """``activation(x @ kernel + bias)`` on the last axis (any rank >= 2)."""

    supports_masking = True
    call_params = {2: ("inputs",), 3: ("inputs", "training")}

    def configure(self) -> None:
        self.units = self.option("units", kind=int)
        if self.units <= 0:
            raise self.file_error(f"option units={self.units} should be positive.")
        self.use_bias = self.option("use_bias", True, kind=bool)
        self.activation_name, self.activation = activation_option(self, "activation")
        self.option("lora_rank", None, allowed=(None,), why="LoRA layers are not supported")
        self.option("lora_alpha", None, allowed=(None,), why="LoRA layers are not supported")
        self.option("quantization_config", None, allowed=(None,),
                    why="quantized layers are not supported")

    def build(self, inputs: Any, **kwargs: Any) -> None:
        x = self.input_sym(inputs, min_ndim=2)
        kernel_rows = x.shape[-1]
        if kernel_rows is None:  # unknown feature size: the kernel says it
            kernel_rows = self.weights[0].shape[0] if self.weights and self.weights[0].ndim == 2 else 0
        expected: list[tuple[str, tuple[Any, ...]]] = [("kernel", (kernel_rows, self.units))]
        if self.use_bias:
            expected.append(("bias", (self.units,)))
        self.check_weights(expected, f"units={self.units}, use_bias={self.use_bias}, "
                                     f"input features {kernel_rows}")
        self.input_dim = kernel_rows

    def infer(self, inputs: Any, **kwargs: Any) -> Any:
        x = self.input_sym(inputs, min_ndim=2)
        if x.shape[-1] not in (None, self.input_dim):
            raise self.file_error(f"it is called on shape {shape_text(x.shape)}, but its kernel takes "
                                  f"{self.input_dim} features.")
        return Sym(x.shape[:-1] + (self.units,), self.dtype)

    def call(self, run: Run, inputs: Any, **kwargs: Any) -> Any:
        weights = self.weights_for(run)
        y = inputs @ weights[0]
        if self.use_bias:
            y = y + weights[1]
        return self.activation(run.xp, y)


class Activation(Layer):
    supports_masking = True

    def configure(self) -> None:
        self.activation_name, self.activation = activation_option(self, "activation", required=True)

    def call(self, run: Run, inputs: Any, **kwargs: Any) -> Any:
        return self.activation(run.xp, inputs)


class Identity(Layer):
    """Dropout, SpatialDropout1D, GaussianNoise, GaussianDropout: at inference each returns its
    input (Keras 3 the same tensor; tf.keras an identity copy, with the same values and mask)."""

    supports_masking = True
    call_params = {2: ("inputs", "training"), 3: ("inputs", "training")}
    OPTIONS = {
        "Dropout": ("rate", "noise_shape"),
        "SpatialDropout1D": ("rate", "noise_shape"),
        "GaussianNoise": ("stddev",),
        "GaussianDropout": ("rate",),
    }

    def configure(self) -> None:
        self.ignore(*self.OPTIONS[self.class_name])

    def infer(self, inputs: Any, **kwargs: Any) -> Any:
        x = self.input_sym(inputs, ndim=3 if self.class_name == "SpatialDropout1D" else None)
        return Sym(x.shape, x.dtype if x.dtype not in ("float32", "float64") else self.dtype)

    def call(self, run: Run, inputs: Any, **kwargs: Any) -> Any:
        return inputs


class Flatten(Layer):
    """``(B, d1, d2, ...) -> (B, d1 * d2 * ...)``; drops the mask (no masking support)."""

    def configure(self) -> None:
        data_format = self.option("data_format", None, allowed=(None, "channels_last", "channels_first"))
        self.channels_first = data_format == "channels_first"

    def infer(self, inputs: Any, **kwargs: Any) -> Any:
        x = self.input_sym(inputs)
        rest = x.shape[1:]
        size = None if None in rest else math.prod(rest)
        return Sym((x.shape[0], size), x.dtype)

    def call(self, run: Run, inputs: Any, **kwargs: Any) -> Any:
        if self.channels_first and inputs.ndim > 2:
            inputs = run.xp.moveaxis(inputs, 1, -1)  # (0, 2, ..., rank-1, 1), as Keras
        return inputs.reshape((inputs.shape[0], -1))


class Reshape(Layer):
    """``(B, ...) -> (B, *target_shape)``, one -1 allowed; drops the mask."""

    def configure(self) -> None:
        target = self.option("target_shape", kind=(list, tuple))
        if not all(isinstance(d, int) and not isinstance(d, bool) and (d > 0 or d == -1) for d in target) \
                or list(target).count(-1) > 1:
            raise self.file_error(f"option target_shape={target!r} should be positive sizes and at most one -1.")
        self.target = tuple(target)

    def _resolved(self, rest: tuple) -> tuple:
        known = math.prod(d for d in self.target if d != -1)
        if None in rest:
            return tuple(None if d == -1 else d for d in self.target)
        total = math.prod(rest)
        if -1 in self.target:
            if known == 0 or total % known:
                raise self.file_error(f"cannot reshape {shape_text(rest)} to {shape_text(self.target)}.")
            return tuple(total // known if d == -1 else d for d in self.target)
        if total != known:
            raise self.file_error(f"cannot reshape {shape_text(rest)} to {shape_text(self.target)}.")
        return self.target

    def infer(self, inputs: Any, **kwargs: Any) -> Any:
        x = self.input_sym(inputs)
        return Sym((x.shape[0],) + self._resolved(x.shape[1:]), x.dtype)

    def call(self, run: Run, inputs: Any, **kwargs: Any) -> Any:
        return inputs.reshape((inputs.shape[0],) + self._resolved(tuple(inputs.shape[1:])))


def activation_option(layer: Layer, key: str, *, required: bool = False) -> tuple[str, Callable[[Any, Any], Any]]:
    """(name, ``f(xp, x)``) of the activation named by option ``key``; UnsupportedLayerError
    for a name gpukb does not implement (the message lists those it does)."""
    value = layer.option(key, MISSING if required else None)
    name = activations.activation_name(value)
    fn = activations.get(name, layer.keras_major) if name is not None else None
    if fn is None:
        names = ", ".join(activations.supported(layer.keras_major))
        raise layer.unsupported(key, value, f"gpukb implements the Keras activations {names}")
    assert name is not None
    return name, fn
