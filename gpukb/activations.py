"""Activations by Keras name: the few elementwise functions that recurrent cells use.

Cells and fused kernels name their activations instead of holding callables, so that a kernel can
pick its own compiled version by name; this module is the one place that lists the names and gives
the reference (NumPy or CuPy) implementation of each. Semantics follow tf.keras 2.
"""

from __future__ import annotations

from typing import Any, Callable

# Fixed order: error messages and fused kernels list the names in this order.
SUPPORTED = ("tanh", "sigmoid", "hard_sigmoid", "relu", "linear")


def _supported_text() -> str:
    return ", ".join(repr(name) for name in SUPPORTED)


def standardize(name: Any) -> str:
    """Return the Keras name of an activation; ``None`` means ``"linear"``, as in Keras."""
    if name is None:
        return "linear"
    if not isinstance(name, str):
        # A callable has no name a fused kernel could compile, so only names are accepted.
        raise TypeError(
            f"activation must be a name (str) or None, not {type(name).__name__} {name!r}: "
            f"expected one of {_supported_text()}."
        )
    if name not in SUPPORTED:
        raise ValueError(f"Unknown activation {name!r}: expected one of {_supported_text()}.")
    return name


def _tanh(xp):
    return xp.tanh


def _sigmoid(xp):
    def sigmoid(x):
        # exp(-|x|) never overflows (|x| written as -min(x, -x), the allowed ops only); the two
        # branches are the same function, each exact where it is used.
        # Python scalars are "weak": the result keeps x's dtype in NumPy, CuPy and torch alike.
        e = xp.exp(xp.minimum(x, -x))
        return xp.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))

    return sigmoid


def _hard_sigmoid(xp):
    def hard_sigmoid(x):
        # tf.keras 2 (tf_keras/src/backend.py): clip(x * 0.2 + 0.5, 0, 1), constants in x's dtype.
        # Keras 3 changed it to relu6(x + 3) / 6, a slope of 1/6: we follow tf.keras.
        return xp.clip(x * 0.2 + 0.5, 0.0, 1.0)

    return hard_sigmoid


def _relu(xp):
    def relu(x):
        # where(x < 0, 0, x) rather than maximum(x, 0): torch's maximum takes no scalars, and
        # NaN must pass through.
        return xp.where(x < 0, xp.zeros_like(x), x)

    return relu


def _linear(xp):
    def linear(x):
        return x

    return linear


_FACTORIES = {
    "tanh": _tanh,
    "sigmoid": _sigmoid,
    "hard_sigmoid": _hard_sigmoid,
    "relu": _relu,
    "linear": _linear,
}


def get(name: Any, xp) -> Callable:
    """The activation ``name`` as an elementwise function on arrays of namespace ``xp``.

    ``xp`` is the array module (``numpy`` or ``cupy``); the function computes in its input's dtype.
    """
    return _FACTORIES[standardize(name)](xp)
