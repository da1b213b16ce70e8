"""The ``cuda`` backend: CuPy arrays on NVIDIA GPUs.

``is_available`` asks the CUDA driver directly through ctypes, so that checking never imports
CuPy or numba.cuda (both are slow to import and may fail without a GPU).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.util

from .._backend import Backend, available, unavailable

INSTALL_HINT = (
    "Install the CUDA extra that matches your driver: pip install 'gpukb[cuda12]' (CUDA 12) or "
    "pip install 'gpukb[cuda13]' (CUDA 13)."
)


def _cuda_driver_problem() -> str | None:
    """None when the driver loads and sees at least one device, else the reason."""
    names = ["libcuda.so.1", "libcuda.so", ctypes.util.find_library("cuda"), "nvcuda.dll"]
    driver = None
    for name in filter(None, names):
        try:
            driver = ctypes.CDLL(name)
            break
        except OSError:
            continue
    if driver is None:
        return "no CUDA driver found (libcuda could not be loaded)"
    status = driver.cuInit(0)
    if status != 0:
        return f"the CUDA driver failed to initialise (cuInit returned error {status})"
    count = ctypes.c_int(0)
    status = driver.cuDeviceGetCount(ctypes.byref(count))
    if status != 0:
        return f"the CUDA driver could not count devices (error {status})"
    if count.value == 0:
        return "no CUDA device found"
    return None


class CUDABackend(Backend):
    name = "cuda"
    array_types = ("cupy:ndarray",)
    priority = 0
    install_hint = INSTALL_HINT

    def is_available(self):
        if importlib.util.find_spec("cupy") is None:
            return unavailable("CuPy is not installed")
        if importlib.util.find_spec("numba_cuda") is None:
            return unavailable("numba-cuda is not installed")
        problem = _cuda_driver_problem()
        if problem is not None:
            return unavailable(problem)
        return available()

    def _load_xp(self):
        import cupy

        return cupy

    def on_clear_session(self) -> None:
        import sys

        cupy = sys.modules.get("cupy")
        if cupy is not None:  # only if this process ever used CuPy
            cupy.get_default_memory_pool().free_all_blocks()
            cupy.get_default_pinned_memory_pool().free_all_blocks()
