"""Plumbing shared by the CUDA kernels: simulator detection, streams, device views, kernel cache.

Two modes, one set of kernels:

- on a GPU, arrays are CuPy arrays; kernels are launched on CuPy's *current* stream (wrapped for
  Numba with ``cuda.external_stream``) and get each CuPy array as a Numba device view made with
  ``cuda.as_cuda_array(a, sync=False)``. ``sync=False`` matters: passing a CuPy array straight to a
  Numba kernel makes Numba synchronise on the stream the array exports (CUDA Array Interface v3),
  i.e. a host sync per launch inside the time loop.
- under the CUDA simulator (``NUMBA_ENABLE_CUDASIM=1`` before Numba is first imported), arrays are
  NumPy arrays, the "stream" is 0 and views are the arrays themselves. The simulator runs every
  kernel in Python threads, one block at a time, so tests use tiny shapes.

Kernels are compiled lazily (first use) and kept in ``_CACHE``; ``clear_caches()`` drops them.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading

import numpy as np

_CACHE: dict = {}
_CACHE_LOCK = threading.RLock()

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _env_flag(name: str) -> bool:
    """Numba's reading of an int environment variable: a non-zero int is on."""
    value = os.environ.get(name, "")
    try:
        return int(value) != 0
    except ValueError:
        return False


def simulator_enabled() -> bool:
    """True when numba.cuda is (or, once imported, will be) the CUDA simulator.

    Numba reads ``NUMBA_ENABLE_CUDASIM`` once, when it is first imported; after that its config
    decides, whatever the environment says now.
    """
    if "numba.cuda" in sys.modules:
        config = sys.modules.get("numba.cuda.core.config")
        if config is not None and hasattr(config, "ENABLE_CUDASIM"):
            return bool(config.ENABLE_CUDASIM)
    if "numba.core.config" in sys.modules:
        return bool(getattr(sys.modules["numba.core.config"], "ENABLE_CUDASIM", 0))
    return _env_flag("NUMBA_ENABLE_CUDASIM")


def cuda():
    """The ``numba.cuda`` module (imported on first need)."""
    from numba import cuda as numba_cuda

    return numba_cuda


def cached(key, build):
    """``_CACHE[key]``, built by ``build()`` on first use (compiles nothing until launched)."""
    with _CACHE_LOCK:
        value = _CACHE.get(key)
        if value is None:
            value = _CACHE[key] = build()
        return value


def clear_caches() -> None:
    """Drop every cached kernel (they recompile on next use)."""
    with _CACHE_LOCK:
        _CACHE.clear()


class Launcher:
    """Launch configuration for one rnn call: the stream and the array views.

    On a GPU the stream is CuPy's current stream at the time of the call; every kernel of the call
    is queued on it, after and before CuPy's own work (GEMMs, allocations) on the same stream, so
    no host synchronisation is ever needed.
    """

    def __init__(self, xp):
        self.sim = simulator_enabled()
        self.xp = xp
        if self.sim:
            self.stream = 0
        else:
            numba_cuda = cuda()
            ptr = xp.cuda.get_current_stream().ptr
            # CuPy's null stream has handle 0: the legacy default stream.
            self.stream = numba_cuda.external_stream(ptr) if ptr else numba_cuda.legacy_default_stream()

    def view(self, array):
        """What a kernel gets for ``array``: a sync-free Numba view on a GPU (strides kept); in the
        simulator the array itself, or a contiguous copy of a strided one (the simulator copies
        arguments in and out as single buffers; gpukb only ever writes to contiguous arrays), or
        a copy of a read-only one (a frozen cell's weights: the simulator writes every argument
        back)."""
        if self.sim:
            if array.flags.c_contiguous and array.flags.writeable:
                return array
            return np.array(array, order="C")
        return cuda().as_cuda_array(array, sync=False)

    def configure(self, kernel, blocks, threads, shared_bytes=0):
        """``kernel`` configured once for repeated launches (``None`` when there is nothing to do)."""
        if blocks <= 0:
            return None
        if shared_bytes:
            return kernel[blocks, threads, self.stream, shared_bytes]
        return kernel[blocks, threads, self.stream]

    def launch(self, kernel, blocks, threads, *args, shared_bytes=0):
        configured = self.configure(kernel, blocks, threads, shared_bytes)
        if configured is not None:
            configured(*args)


def sm_count() -> int:
    """Streaming multiprocessors of the current device (1 in the simulator)."""
    if simulator_enabled():
        return 1
    return int(cuda().get_current_device().MULTIPROCESSOR_COUNT)


# --------------------------------------------------------------------------------------------
# GEMM precision (TF32 only on opt-in)
# --------------------------------------------------------------------------------------------

@contextlib.contextmanager
def gemm_precision(dtype, allow_tf32: bool):
    """Run CuPy's float32 GEMMs inside the block in full FP32, or TF32 when ``allow_tf32``.

    CuPy keeps one process-wide compute type per dtype (``CUPY_TF32=1`` makes TF32 its default);
    gpukb sets it explicitly for its own GEMMs and restores the previous value afterwards.
    Nothing to do for float64, or in the simulator (NumPy GEMMs).
    """
    if simulator_enabled() or np.dtype(dtype) != np.float32:
        yield
        return
    try:
        import importlib

        linalg = importlib.import_module("cupy._core._routines_linalg")
        get, set_ = linalg.get_compute_type, linalg.set_compute_type
        wanted = linalg.COMPUTE_TYPE_TF32 if allow_tf32 else linalg.COMPUTE_TYPE_DEFAULT
    except (ImportError, AttributeError):  # pragma: no cover - CuPy without the switch
        yield
        return
    previous = get(np.float32)
    set_(np.float32, wanted)
    try:
        yield
    finally:
        set_(np.float32, previous)
