"""The ``cpu`` backend: NumPy arrays, fused Numba kernels for the Keras cells."""

from __future__ import annotations

import importlib.util

import numpy

from .._backend import Backend, available, unavailable


class CPUBackend(Backend):
    name = "cpu"
    array_types = ("numpy:ndarray",)
    priority = 0
    install_hint = "Reinstall gpukb (pip install gpukb) to get its Numba dependency."

    def is_available(self):
        if importlib.util.find_spec("numba") is None:
            return unavailable("Numba is not installed")
        return available()

    def _load_xp(self):
        return numpy
