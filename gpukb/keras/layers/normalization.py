"""LayerNormalization and BatchNormalization (inference: the moving statistics).

Sources: Keras 3 ``keras/src/layers/normalization/{layer,batch}_normalization.py`` with
``keras/src/ops/nn.py`` (``_layer_normalization``, ``batch_normalization``); tf.keras 2
``tf_keras/src/layers/normalization/{layer_normalization,batch_normalization}.py``. Both compute
``x * inv + (beta - mean * inv)`` with ``inv = gamma / sqrt(variance + epsilon)``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import Layer, Run, Sym, shape_text


def _axes(layer: Layer, value: Any, ndim: int) -> list[int]:
    """``axis`` (an int or a list of ints, negative allowed) as sorted non-negative axes."""
    axes = list(value) if isinstance(value, (list, tuple)) else [value]
    if not axes or not all(isinstance(a, int) and not isinstance(a, bool) for a in axes):
        raise layer.file_error(f"option axis={value!r} should be an int or a list of ints.")
    resolved = sorted({a + ndim if a < 0 else a for a in axes})
    if resolved[0] < 1 or resolved[-1] >= ndim:
        raise layer.file_error(f"option axis={value!r} does not fit its input of rank {ndim} "
                               "(the batch axis cannot be normalized over).")
    return resolved


def _param_shape(shape: tuple, axes: list[int], layer: Layer) -> tuple:
    sizes = tuple(shape[a] for a in axes)
    if None in sizes:
        raise layer.file_error(f"its input shape {shape_text(shape)} has an unknown size on axis {axes}.")
    return sizes


def _broadcast(xp: Any, v: Any, ndim: int, axes: list[int]) -> Any:
    shape = [1] * ndim
    for a, size in zip(axes, v.shape):
        shape[a] = size
    return v.reshape(tuple(shape))


class LayerNormalization(Layer):
    supports_masking = True
    autocast = False  # Keras computes in at least float32 and casts the result

    def configure(self) -> None:
        self.axis_option = self.option("axis", -1, kind=(int, list, tuple))
        self.epsilon = float(self.option("epsilon", 1e-3, kind=(int, float)))
        self.center = self.option("center", True, kind=bool)
        self.scale = self.option("scale", True, kind=bool)
        self.rms_scaling = self.option("rms_scaling", False, kind=bool)

    def build(self, inputs: Any, **kwargs: Any) -> None:
        x = self.input_sym(inputs)
        self.axes = _axes(self, self.axis_option, x.ndim)
        shape = _param_shape(x.shape, self.axes, self)
        expected = []
        if self.scale or self.rms_scaling:
            expected.append(("gamma", shape))
        if self.center and not self.rms_scaling:
            expected.append(("beta", shape))
        self.check_weights(expected, f"axis={self.axis_option}, center={self.center}, scale={self.scale}")
        self.ndim = x.ndim

    def infer(self, inputs: Any, **kwargs: Any) -> Any:
        x = self.input_sym(inputs, ndim=self.ndim)
        return Sym(x.shape, self.dtype)

    def call(self, run: Run, inputs: Any, **kwargs: Any) -> Any:
        xp = run.xp
        x = inputs if inputs.dtype == self.dtype else xp.asarray(inputs, dtype=self.dtype)
        weights = [_broadcast(xp, w, x.ndim, self.axes) for w in self.weights_for(run)]
        gamma = weights[0] if (self.scale or self.rms_scaling) else None
        beta = weights[-1] if (self.center and not self.rms_scaling) else None
        axes = tuple(self.axes)
        mean = xp.mean(x, axis=axes, keepdims=True)
        variance = xp.mean(xp.square(x - mean), axis=axes, keepdims=True)
        if self.rms_scaling:  # Keras 3's deprecated option: scales by the variance, no centring
            inv = 1.0 / xp.sqrt(variance + self.epsilon)
            return x * inv * gamma if gamma is not None else x * inv
        return _normalize(xp, x, mean, variance, self.epsilon, gamma, beta)


class BatchNormalization(Layer):
    supports_masking = True
    call_params = {2: ("inputs", "training", "mask"), 3: ("inputs", "training", "mask")}

    def configure(self) -> None:
        self.axis_option = self.option("axis", -1, kind=(int, list, tuple))
        self.epsilon = float(self.option("epsilon", 1e-3, kind=(int, float)))
        self.center = self.option("center", True, kind=bool)
        self.scale = self.option("scale", True, kind=bool)
        self.ignore("momentum", "synchronized", "fused", "renorm_clipping", "renorm_momentum")
        self.option("renorm", False, allowed=(False,), why="batch renormalization is not supported")
        self.option("virtual_batch_size", None, allowed=(None,),
                    why="virtual batches are not supported")
        self.option("adjustment", None, allowed=(None,), why="an adjustment function is Python code")

    def count_non_trainable_params(self) -> int:
        # The moving mean and variance, the last two weights.
        moving = sum(int(np.prod(np.shape(w))) for w in self.weights[-2:])
        return max(super().count_non_trainable_params(), moving)

    def build(self, inputs: Any, **kwargs: Any) -> None:
        x = self.input_sym(inputs, min_ndim=2)
        self.axes = _axes(self, self.axis_option, x.ndim)
        shape = _param_shape(x.shape, self.axes, self)
        names = (["gamma"] if self.scale else []) + (["beta"] if self.center else []) + [
            "moving_mean", "moving_variance"]
        self.check_weights([(name, shape) for name in names],
                           f"axis={self.axis_option}, center={self.center}, scale={self.scale}")
        self.ndim = x.ndim

    def infer(self, inputs: Any, **kwargs: Any) -> Any:
        x = self.input_sym(inputs, ndim=self.ndim)
        return Sym(x.shape, self.dtype)

    def call(self, run: Run, inputs: Any, mask: Any = None, **kwargs: Any) -> Any:
        weights = [_broadcast(run.xp, w, inputs.ndim, self.axes) for w in self.weights_for(run)]
        gamma = weights.pop(0) if self.scale else None
        beta = weights.pop(0) if self.center else None
        mean, variance = weights
        return _normalize(run.xp, inputs, mean, variance, self.epsilon, gamma, beta)


def _normalize(xp: Any, x: Any, mean: Any, variance: Any, epsilon: float, gamma: Any,
               beta: Any) -> Any:
    """(x - mean) / sqrt(variance + epsilon) * gamma + beta, as Keras's ``batch_normalization``
    op computes it (one scale and one offset, each folded from the statistics first)."""
    inv = 1.0 / xp.sqrt(variance + epsilon)
    if gamma is not None:
        inv = inv * gamma
    offset = -mean * inv
    if beta is not None:
        offset = offset + beta
    return x * inv + offset
