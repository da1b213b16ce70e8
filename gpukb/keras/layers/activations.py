"""Keras activations by name, for ``Dense``, ``Activation`` and ``TimeDistributed(Dense)``.

``gpukb.activations`` holds the few activations the recurrent cells (and their fused kernels)
know; a layer's output activation can be any of Keras's, so this module implements those by
name, with the formula of the Keras version that wrote the file where the two differ
(``hard_sigmoid``: tf.keras 2 ``clip(0.2 x + 0.5, 0, 1)``, Keras 3 ``relu6(x + 3) / 6``).
Sources: ``tf_keras/src/activations.py`` (with ``tf_keras/src/backend.py``) and
``keras/src/activations/activations.py`` (with ``keras/src/backend/tensorflow/nn.py``).
Every function computes in its input's dtype with the array module ``xp`` (NumPy or CuPy).
"""

from __future__ import annotations

import importlib
import math
from typing import Any, Callable

# Constants of tf.nn.selu (and Keras 3's selu).
_SELU_ALPHA = 1.6732632423543772848170429916717
_SELU_SCALE = 1.0507009873554804934193349852946


def _sigmoid(xp, x):
    # The never-overflowing form of gpukb.activations (same function, exact where used).
    e = xp.exp(xp.minimum(x, -x))
    return xp.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def _relu(xp, x):
    return xp.where(x < 0, xp.zeros_like(x), x)  # NaN passes through, as tf.nn.relu


def _relu6(xp, x):
    return xp.minimum(_relu(xp, x), 6.0)


def _softplus(xp, x):
    # log(1 + exp(x)) without overflow: max(x, 0) + log1p(exp(-|x|)).
    return xp.maximum(x, 0.0) + xp.log1p(xp.exp(xp.minimum(x, -x)))


def _elu(xp, x):
    return xp.where(x > 0, x, xp.expm1(xp.minimum(x, 0.0)))


def _softmax(xp, x):
    shifted = x - xp.max(x, axis=-1, keepdims=True)
    e = xp.exp(shifted)
    return e / xp.sum(e, axis=-1, keepdims=True)


def _log_softmax(xp, x):
    shifted = x - xp.max(x, axis=-1, keepdims=True)
    return shifted - xp.log(xp.sum(xp.exp(shifted), axis=-1, keepdims=True))


def _erf(xp):
    # SciPy (a gpukb dependency) and CuPy's cupyx are imported here, never by `import gpukb`.
    module = "cupyx.scipy.special" if xp.__name__ == "cupy" else "scipy.special"
    return importlib.import_module(module).erf


def _gelu(xp, x):
    # approximate=False, the default of the name "gelu" in both versions: tf.nn.gelu.
    return 0.5 * x * (1.0 + _erf(xp)(x * (1.0 / math.sqrt(2.0))))


def _hard_sigmoid_tf_keras(xp, x):
    return xp.clip(x * 0.2 + 0.5, 0.0, 1.0)


def _hard_sigmoid_keras3(xp, x):
    return _relu6(xp, x + 3.0) / 6.0


# Named module-level functions, not lambdas: a loaded model pickles (its layers keep them).
def _linear(xp, x):
    return x


def _tanh(xp, x):
    return xp.tanh(x)


def _selu(xp, x):
    return _SELU_SCALE * xp.where(x > 0, x, _SELU_ALPHA * xp.expm1(xp.minimum(x, 0.0)))


def _softsign(xp, x):
    return x / (1.0 + xp.abs(x))


def _silu(xp, x):
    return x * _sigmoid(xp, x)


def _exponential(xp, x):
    return xp.exp(x)


def _leaky_relu(xp, x):
    return xp.where(x < 0, x * 0.2, x)  # alpha / negative_slope 0.2


def _mish(xp, x):
    return x * xp.tanh(_softplus(xp, x))


def _hard_silu(xp, x):
    return x * _hard_sigmoid_keras3(xp, x)


_COMMON: dict[str, Callable[[Any, Any], Any]] = {
    "linear": _linear,
    "relu": _relu,
    "sigmoid": _sigmoid,
    "tanh": _tanh,
    "softmax": _softmax,
    "log_softmax": _log_softmax,
    "elu": _elu,
    "selu": _selu,
    "softplus": _softplus,
    "softsign": _softsign,
    "swish": _silu,
    "silu": _silu,
    "gelu": _gelu,
    "exponential": _exponential,
    "relu6": _relu6,
    "leaky_relu": _leaky_relu,
    "mish": _mish,
}

_BY_VERSION: dict[int, dict[str, Callable[[Any, Any], Any]]] = {
    2: {**_COMMON, "hard_sigmoid": _hard_sigmoid_tf_keras},
    3: {
        **_COMMON,
        "hard_sigmoid": _hard_sigmoid_keras3,
        "hard_silu": _hard_silu,
        "hard_swish": _hard_silu,
    },
}


def supported(keras_major: int) -> tuple[str, ...]:
    """The activation names gpukb computes for files written by Keras ``keras_major``."""
    return tuple(_BY_VERSION[keras_major])


def activation_name(value: Any) -> str | None:
    """The activation name stored in a config (a name, None, or Keras 3's serialized function
    ``{"class_name": "function", "config": name}``); None when it is not a plain name."""
    if value is None:
        return "linear"
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("config"), str) and value.get(
            "class_name") in ("function", "builtin_function"):
        return value["config"]
    return None


def get(name: str, keras_major: int) -> Callable[[Any, Any], Any] | None:
    """``f(xp, x)`` for activation ``name`` in Keras ``keras_major``'s semantics, or None."""
    return _BY_VERSION[keras_major].get(name)
