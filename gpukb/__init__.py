"""gpukb: the Keras backend API for NumPy and CuPy arrays, with fused CPU and CUDA kernels.

Importing gpukb is light: it reads the config file and defines the API. NumPy is the only array
library it imports; Numba, CuPy and numba.cuda load when a backend first needs them.
"""

from ._version import __version__
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

__all__ = [
    "__version__",
    "KerasTensor",
    "clear_session",
    "epsilon",
    "floatx",
    "get_uid",
    "image_data_format",
    "is_keras_tensor",
    "placeholder",
    "reset_uids",
    "set_epsilon",
    "set_floatx",
    "set_image_data_format",
]
