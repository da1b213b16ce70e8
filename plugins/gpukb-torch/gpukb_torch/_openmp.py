"""torch's OpenMP worker threads, let go before gpukb's CPU kernels run.

After each parallel operation torch's OpenMP threads keep spinning, waiting for the next one
(libgomp's default: about 300,000 spins, several milliseconds). In a training loop a torch op
(the input's copy, the loss, the optimizer's step) comes right before each drop-in call, so a
spinning thread shared the cores with gpukb's kernel threads, which meet at every time step: the
drop-in LSTM (32, 100, 64, 128), forward + backward after a torch copy, took 9-14 ms against
8.1-8.7 with the threads let go, at (8, 200, 32, 256) 16.6-17.7 against 11.5-12.5 (2-core EPYC,
2026-12-04; torch's own LSTM 6.4-8.1 and 8.8-9.2).

``release()`` asks the process's OpenMP runtimes (libgomp, LLVM's libomp, Intel's libiomp5:
whichever are loaded) to let the calling thread's workers go, through the OpenMP 5.0 call
``omp_pause_resource_all(omp_pause_soft)``; each runtime starts them again at the next parallel
operation (measured: torch's LSTM after a release 0-4% slower). Nothing is computed differently.
Where no runtime offers the call (another platform, an older runtime), it does nothing.
``gpukb_torch.release_openmp_threads = False`` turns it off.
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading

_OMP_PAUSE_SOFT = 1
_RUNTIMES = ("libgomp", "libomp", "libiomp5")

_lock = threading.Lock()
_pauses: list | None = None   # the loaded runtimes' omp_pause_resource_all, found once


def _loaded_runtimes() -> list[str]:
    """Paths of the OpenMP runtimes mapped into this process (Linux: /proc/self/maps)."""
    if not sys.platform.startswith("linux"):
        return []
    paths = []
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                path = line.rstrip("\n").split(" ")[-1]
                if os.path.basename(path).startswith(_RUNTIMES) and path not in paths:
                    paths.append(path)
    except OSError:
        return []
    return paths


def _find_pauses() -> list:
    pauses = []
    for path in _loaded_runtimes():
        try:
            library = ctypes.CDLL(path, mode=os.RTLD_NOLOAD | os.RTLD_LOCAL)   # already loaded
            pause = library.omp_pause_resource_all
        except (OSError, AttributeError):
            continue
        pause.argtypes = [ctypes.c_int]
        pause.restype = ctypes.c_int
        pauses.append(pause)
    return pauses


def runtimes() -> int:
    """How many loaded OpenMP runtimes ``release`` reaches (found at its first call)."""
    global _pauses
    with _lock:
        if _pauses is None:
            _pauses = _find_pauses()
        return len(_pauses)


def release() -> None:
    """Let the calling thread's OpenMP workers go in every loaded runtime that allows it (a
    call inside a parallel region is refused by the runtime and changes nothing)."""
    runtimes()
    for pause in _pauses or ():
        pause(_OMP_PAUSE_SOFT)
