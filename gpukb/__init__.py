"""gpukb: the Keras backend API for NumPy and CuPy arrays, with fused CPU and CUDA kernels.

Importing gpukb is light: it reads the config file and defines the API. NumPy is the only array
library it imports; Numba, CuPy and numba.cuda load when a backend first needs them.
"""

from typing import TYPE_CHECKING

from ._version import __version__
from ._checkout import map_clone_kernels as _map_clone_kernels

_map_clone_kernels(__path__[0])  # a clone's root: its kernels/ folder is gpukb.kernels
from ._state import (
    clear_session,
    epsilon,
    floatx,
    get_uid,
    image_data_format,
    reset_uids,
    set_epsilon,
    set_floatx,
    set_image_data_format,
)
from ._keras_tensor import KerasTensor, is_keras_tensor, placeholder
from ._backend import Availability, Backend
from ._dispatch import (
    backend_available,
    backend_for,
    get_backend,
    list_backends,
    refresh_backends,
    set_backend,
    use_backend,
)
# The gradient entries load gpukb._vjp (and optree) on their first call.
from ._frontend import rnn, rnn_pullback, rnn_residual_specs, rnn_vjp
from ._jit_step import jit_step
from . import activations, cells

if TYPE_CHECKING:
    from . import keras
else:
    def __getattr__(name: str):
        """``gpukb.keras`` is imported on first use: most programs never load a Keras file."""
        if name == "keras":
            import importlib

            return importlib.import_module(".keras", __name__)
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(set(globals()) | {"keras"})

__all__ = [
    "__version__",
    "activations",
    "cells",
    "keras",
    "Availability",
    "Backend",
    "KerasTensor",
    "backend_available",
    "backend_for",
    "clear_session",
    "epsilon",
    "floatx",
    "get_backend",
    "get_uid",
    "image_data_format",
    "is_keras_tensor",
    "jit_step",
    "list_backends",
    "placeholder",
    "refresh_backends",
    "reset_uids",
    "rnn",
    "rnn_pullback",
    "rnn_residual_specs",
    "rnn_vjp",
    "set_backend",
    "set_epsilon",
    "set_floatx",
    "set_image_data_format",
    "use_backend",
]
