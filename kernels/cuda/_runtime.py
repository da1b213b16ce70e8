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
import logging
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

    def repeated(self, configured, args, varying):
        """``configured`` to be launched many times with ``args``, but for the scalars at the
        positions ``varying``, whose values each call of the result gives (see ``RepeatedLaunch``)."""
        return RepeatedLaunch(configured, args, varying, fast=not self.sim)


logger = logging.getLogger("gpukb.kernels")
# Launching through numba-cuda's dispatcher types and wraps every argument again at every launch:
# about 100 us a launch of the per-step kernel (10 arrays, two tuples) on the H200, where the
# kernel itself takes a few us (profile_gpu.py host, 2026-12-04). FAST_LAUNCH = False restores it
# (profile_gpu.py launch compares the two).
FAST_LAUNCH = True


class RepeatedLaunch:
    """One configured kernel launched many times with the same arguments but for a few integer or
    boolean scalars (the per-step loop: the step index, the output slot, whether to write).

    On a GPU the arguments are converted to the kernel's parameters once, as numba-cuda's own
    ``_Kernel.launch`` converts them, and each call replaces only the varying scalars before
    handing the parameters to ``cuda.core.launch``. This uses numba-cuda internals
    (``_compile_for_args``, ``_prepare_args``, ``_codelibrary``); where they differ (another
    numba-cuda) the ordinary launch is used, which gives the same results more slowly, and the
    reason is logged once at DEBUG on ``gpukb.kernels``.
    """

    def __init__(self, configured, args, varying, fast=True):
        self._configured = configured
        self._args = list(args)
        self._varying = tuple(varying)
        self._fast = _FastLaunch.build(configured, self._args, self._varying) if fast and FAST_LAUNCH else None

    @property
    def fast(self) -> bool:
        return self._fast is not None

    def __call__(self, *values):
        if self._fast is not None:
            self._fast(values)
            return
        args = self._args
        for position, value in zip(self._varying, values):
            args[position] = value
        self._configured(*args)


_FAST_PROBLEM_LOGGED = set()


class _FastLaunch:
    def __init__(self, kernel, function, launch, config, stream, params, slots):
        self._kernel, self._function, self._launch = kernel, function, launch
        self._config, self._stream = config, stream
        self._params = params      # the kernel's parameters, flat, as numba-cuda builds them
        self._slots = slots        # (index in params, numba type) of each varying scalar

    @classmethod
    def build(cls, configured, args, varying):
        try:
            from cuda.core import LaunchConfig, launch
            from numba.cuda._compat import CUDA_CORE_GE_1_0

            kernel = configured.dispatcher._compile_for_args(*args)
            if kernel.debug or kernel.extensions:
                raise NotImplementedError("a debug kernel or one with argument extensions")
            stream = configured.stream
            params, slots, retr = [], {}, []
            for position, (ty, value) in enumerate(zip(kernel.argument_types, args)):
                start = len(params)
                kernel._prepare_args(ty, value, stream, retr, params)
                if position in varying:
                    if len(params) != start + 1:
                        raise NotImplementedError(f"varying argument {position} of type {ty}")
                    slots[position] = (start, ty)
            if retr:
                raise NotImplementedError("arguments that need a write-back")
            cooperative = {"is_cooperative" if CUDA_CORE_GE_1_0 else "cooperative_launch": kernel.cooperative}
            config = LaunchConfig(grid=configured.griddim, block=configured.blockdim,
                                  shmem_size=configured.sharedmem, **cooperative)
            function = kernel._codelibrary.get_cufunc().kernel
        except Exception as error:  # noqa: BLE001 - any difference in numba-cuda's internals
            reason = f"{type(error).__name__}: {error}"
            if reason not in _FAST_PROBLEM_LOGGED:
                _FAST_PROBLEM_LOGGED.add(reason)
                logger.debug("kernel launches go through numba-cuda's dispatcher (%s)", reason)
            return None
        return cls(kernel, function, launch, config, stream, params, [slots[p] for p in varying])

    def __call__(self, values):
        params, kernel = self._params, self._kernel
        for (index, ty), value in zip(self._slots, values):
            one = []
            kernel._prepare_args(ty, value, self._stream, None, one)
            params[index] = one[0]
        self._launch(self._stream, self._config, self._function, *params)


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
