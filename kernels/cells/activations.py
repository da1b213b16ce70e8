"""The Keras activations of the recurrent cells: one table for every kernel, CPU and CUDA.

``NAMES`` lists them (``gpukb.activations.SUPPORTED`` is this tuple); a kernel receives an
activation as its index in ``NAMES`` (``code(name)``) and applies it with ``activate(code, x)``.
Every function is written once for float32 and float64: constants take ``x``'s type
(``constant``), so a float32 kernel never computes in float64.

Adding an activation: its name at the end of ``NAMES``, its scalar function, and its branch in
``activate``, all here (plus the NumPy reference in ``gpukb/activations.py``). The CPU row loops
(``kernels/cpu/activations.py``) give tanh and sigmoid loops of their own for speed; any other
activation runs in their generic loop.

``tanh`` and ``sigmoid`` call ``exp``/``tanh``, which each target computes its own way: their
bodies here are the portable versions (what the CUDA kernels compile, through libdevice, and
what the CUDA simulator runs); the CPU kernels register vectorisable polynomial versions for the
same names (``kernels/cpu/activations.py``). The other activations are the same code on every
target. Semantics follow tf.keras 2; ``hard_sigmoid_keras3`` is Keras 3's ``hard_sigmoid``.
"""

from __future__ import annotations

import math

from ._jit import constant, jitable

NAMES = ("tanh", "sigmoid", "hard_sigmoid", "relu", "linear", "hard_sigmoid_keras3")
TANH, SIGMOID, HARD_SIGMOID, RELU, LINEAR, HARD_SIGMOID_KERAS3 = range(len(NAMES))
CODES = {name: index for index, name in enumerate(NAMES)}


def code(name) -> int:
    """The kernels' code for an activation name (ValueError naming the known ones)."""
    try:
        return CODES[name]
    except (KeyError, TypeError):
        raise ValueError(f"activation {name!r} is not one the kernels know; expected one of "
                         f"{', '.join(repr(n) for n in NAMES)}") from None


def tanh(x):
    """tanh (portable version; each target registers how it compiles it)."""
    return math.tanh(x)


def sigmoid(x):
    """1 / (1 + exp(-x)) through exp(-|x|), which never overflows (portable version)."""
    one = constant(x, 1.0)
    e = math.exp(-abs(x))
    if x >= constant(x, 0.0):
        return one / (one + e)
    return e / (one + e)


@jitable
def clip(y, low, high):
    """min(max(y, low), high), with NaN passing through."""
    y = low if y < low else y
    return high if y > high else y


@jitable
def hard_sigmoid(x):
    """tf.keras 2: clip(0.2 x + 0.5, 0, 1)."""
    return clip(constant(x, 0.2) * x + constant(x, 0.5), constant(x, 0.0), constant(x, 1.0))


@jitable
def hard_sigmoid_keras3(x):
    """Keras 3's hard_sigmoid: relu6(x + 3) / 6."""
    six = constant(x, 6.0)
    return clip(x + constant(x, 3.0), constant(x, 0.0), six) / six


@jitable
def relu(x):
    """max(x, 0), with NaN passing through."""
    return constant(x, 0.0) if x < constant(x, 0.0) else x


@jitable
def activate(code, x):
    """The activation with kernel code ``code`` (see ``NAMES``) at ``x``."""
    if code == TANH:
        return tanh(x)
    if code == SIGMOID:
        return sigmoid(x)
    if code == HARD_SIGMOID:
        return hard_sigmoid(x)
    if code == RELU:
        return relu(x)
    if code == HARD_SIGMOID_KERAS3:
        return hard_sigmoid_keras3(x)
    return x  # LINEAR


# --------------------------------------------------------------------------------------------
# Derivatives (the backward kernels): d activate(code, x) / dx, from the output y = activate(x)


@jitable
def derivative(code, y):
    """The slope of activation ``code`` where its output is ``y``: tanh 1 - y^2, sigmoid
    y (1 - y), the hard sigmoids their slope where 0 < y < 1 (else 0), relu 1 where y > 0 (else
    0), linear 1. From the output, so a backward pass needs no pre-activations; at a kink of a
    piecewise linear activation it takes the flat side."""
    one = constant(y, 1.0)
    zero = constant(y, 0.0)
    if code == TANH:
        return one - y * y
    if code == SIGMOID:
        return y * (one - y)
    if code == HARD_SIGMOID:
        return constant(y, 0.2) if zero < y < one else zero
    if code == HARD_SIGMOID_KERAS3:
        return one / constant(y, 6.0) if zero < y < one else zero
    if code == RELU:
        return one if y > zero else zero
    return one  # LINEAR
