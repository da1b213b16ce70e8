"""Activations by Keras name: the few elementwise functions that recurrent cells use.

Cells and fused kernels name their activations instead of holding callables, so that a kernel can
pick its own compiled version by name. The names are the kernels' table
(``gpukb.kernels.cells.activations.NAMES``, which imports nothing heavy); this module gives the
reference (NumPy, CuPy or any backend namespace) implementation of each. Semantics follow
tf.keras 2; ``hard_sigmoid_keras3`` is Keras 3's ``hard_sigmoid``.
"""

from __future__ import annotations

from typing import Any, Callable

from .kernels.cells.activations import NAMES as _KERNEL_NAMES

# Fixed order: error messages and fused kernels list the names in this order.
SUPPORTED: tuple[str, ...] = tuple(_KERNEL_NAMES)


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


def _hard_sigmoid_keras3(xp):
    def hard_sigmoid_keras3(x):
        # Keras 3 (keras/src/backend/{jax,tensorflow}/nn.py): relu6(x + 3) / 6.
        return xp.clip(x + 3.0, 0.0, 6.0) / 6.0

    return hard_sigmoid_keras3


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
    "hard_sigmoid_keras3": _hard_sigmoid_keras3,
}
assert tuple(_FACTORIES) == SUPPORTED, "every kernel activation needs its reference here"


def get(name: Any, xp) -> Callable:
    """The activation ``name`` as an elementwise function on arrays of namespace ``xp``.

    ``xp`` is the array module (``numpy`` or ``cupy``); the function computes in its input's dtype.
    """
    return _FACTORIES[standardize(name)](xp)
