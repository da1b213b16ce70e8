"""The Keras activations as CUDA device functions, one set per float dtype.

Codes follow ``gpukb.activations.SUPPORTED``: 0 tanh, 1 sigmoid, 2 hard_sigmoid, 3 relu, 4 linear.
The formulas are those of ``gpukb.activations`` (the reference): sigmoid via ``exp(-|x|)`` so it
never overflows, tf.keras 2's hard_sigmoid ``clip(0.2 x + 0.5, 0, 1)``, relu passing NaN through.
Constants are typed in the kernel's dtype so float32 kernels never compute in double.
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda

from gpukb.activations import SUPPORTED

from . import _runtime

CODES = {name: code for code, name in enumerate(SUPPORTED)}


def code(name: str) -> int:
    return CODES[name]


def _build(dtype):
    zero = dtype.type(0.0)
    one = dtype.type(1.0)
    slope = dtype.type(0.2)
    half = dtype.type(0.5)

    @cuda.jit(device=True)
    def activate(act, x):
        if act == 0:
            return math.tanh(x)
        if act == 1:
            e = math.exp(-abs(x))
            if x >= zero:
                return one / (one + e)
            return e / (one + e)
        if act == 2:
            y = x * slope + half
            if y < zero:
                return zero
            if y > one:
                return one
            return y
        if act == 3:
            if x < zero:
                return zero
            return x
        return x

    return activate


def device_activation(dtype):
    """The device function ``activate(code, x)`` for ``dtype`` (float32 or float64)."""
    dtype = np.dtype(dtype)
    return _runtime.cached(("activation", dtype.str), lambda: _build(dtype))
