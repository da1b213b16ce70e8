"""Numba's on-disk cache for the CPU kernels, made safe wherever gpukb is installed.

``cached_njit(**options)`` is ``numba.njit(cache=True, **options)`` with three differences:

- No usable cache location (a read-only installation with an unwritable home, an unusable
  ``NUMBA_CACHE_DIR``): plain ``cache=True`` raises ``RuntimeError: cannot cache function ...: no
  locator available`` when the module is imported, so every fused call failed. Here the function
  compiles in memory instead, with one RuntimeWarning per process that names NUMBA_CACHE_DIR.
- A cached index or data file that cannot be read back (truncated or corrupt, e.g. by a crashed
  writer or a full disk): Numba raises on every call. Here that function's cache files are
  deleted, it compiles and writes them anew, with one RuntimeWarning per process.
- Loading a function from the cache does not "refresh" Numba's target context first: that
  imports and installs every implementation Numba has (``numba.np.arraymath`` imports
  ``scipy.linalg``), a few tenths of a second of a process's first call that only compiling
  needs, and Numba's compiler refreshes the context itself before it compiles anything.

``ensure_fresh_cache()`` drops the package's cache files when any kernel source changed: Numba
keys a cached function on its own file only, and the kernels inline the activations, the GEMM, the
row updates and the cell definitions (``kernels/cells``) from other files.
"""

import glob
import hashlib
import os
import threading
import warnings

from numba import njit
from numba.core.caching import FunctionCache
from numba.core.dispatcher import Dispatcher
from numba.core.runtime import rtsys

_HERE = os.path.dirname(os.path.abspath(__file__))
_CELLS = os.path.join(os.path.dirname(_HERE), "cells")  # the cell definitions, inlined too
_STAMP = "gpukb-kernels-cpu.sources"

_caches = []    # every _SelfHealingCache made by cached_njit
_dispatchers = []   # the dispatchers those caches belong to (for cache_counts)
_warned = set()
_lock = threading.Lock()
_fresh_checked = False


def _warn_once(kind, message):
    with _lock:
        if kind in _warned:
            return
        _warned.add(kind)
    warnings.warn(f"gpukb CPU kernels: {message}", RuntimeWarning, stacklevel=3)


def _remove(paths):
    for path in paths:
        try:
            os.remove(path)
        except OSError:
            pass


class _SelfHealingCache(FunctionCache):
    """Numba's per-function disk cache; a file it cannot read back is deleted, not re-raised."""

    def files(self):
        """This function's index file and data files (whatever signatures they hold)."""
        base = os.path.join(self._cache_path, self._impl.filename_base)
        return [base + ".nbi"] + glob.glob(glob.escape(base) + ".*.nbc")

    # Whether the function's code uses Numba's runtime (NRT); False for those compiled with
    # _nrt=False (the time loops: see _common.NO_REFCOUNT), set by cached_njit.
    uses_runtime = True

    def load_overload(self, sig, target_context):
        # Numba's version first "refreshes" the target context (see the module docstring). Only
        # code that uses Numba's runtime (NRT) needs it started first: starting it compiles
        # NRT's functions with LLVM, 15-17 ms of a process's first forward call (61-66 against
        # 46-49 ms, EPYC, 2026-12-04), whose one loaded function, the time loop, uses none.
        if self.uses_runtime:
            rtsys.initialize(target_context)
        try:
            with self._guard_against_spurious_io_errors():
                return self._load_overload(sig, target_context)
        except Exception as err:  # EOFError, UnpicklingError, ...: unreadable, so useless
            _remove(self.files())
            _warn_once("corrupt", f"dropped an unreadable Numba cache file in {self._cache_path} "
                                  f"({type(err).__name__}: {err}); recompiling and rewriting it.")
            return None  # the dispatcher compiles, then save_overload writes fresh files


def cached_njit(**options):
    """``numba.njit(cache=True, **options)`` that still works without a usable cache location,
    and that recompiles over unreadable cache files (see the module docstring)."""

    def decorate(func):
        disp = njit(**options)(func)
        if not isinstance(disp, Dispatcher):  # NUMBA_DISABLE_JIT: njit returned func itself
            return disp
        try:
            cache = _SelfHealingCache(func)
        except RuntimeError as err:  # "cannot cache function ...: no locator available ..."
            _warn_once("no-locator", f"Numba cannot cache compiled kernels on disk ({err}). They "
                                     "are compiled in memory, again in every process (seconds "
                                     "on first use). To keep them between processes, set the "
                                     "environment variable NUMBA_CACHE_DIR to a writable folder.")
            return disp
        cache.uses_runtime = options.get("_nrt", True)
        disp._cache = cache  # what Dispatcher.enable_caching() does, with our cache class
        _caches.append(cache)
        _dispatchers.append(disp)
        return disp

    return decorate


def cache_counts():
    """``(loaded, compiled)``: kernel signatures this process has taken from Numba's disk cache,
    and compiled (and written there), over every kernel with a disk cache (Numba's counters)."""
    dispatchers = list(_dispatchers)
    loaded = sum(sum(d.stats.cache_hits.values()) for d in dispatchers)
    compiled = sum(sum(d.stats.cache_misses.values()) for d in dispatchers)
    return loaded, compiled


def cache_locations():
    """The folders Numba keeps this process's kernels in (none: no usable cache location)."""
    return sorted({c.cache_path for c in _caches})


def _modules():
    """The names of this package's modules (their cache files start with them)."""
    return {name[:-3] for name in os.listdir(_HERE) if name.endswith(".py")}


def _sources_digest():
    digest = hashlib.sha256()
    for folder in (_HERE, _CELLS):
        for name in sorted(os.listdir(folder)):
            if name.endswith(".py"):
                with open(os.path.join(folder, name), "rb") as f:
                    digest.update(name.encode() + b"\0" + f.read())
    return digest.hexdigest()


def ensure_fresh_cache():
    """Drop the kernels' cache files when any source of the CPU kernels or the cell definitions
    changed since they were written (a stamp file in the cache folder holds the sources' hash).
    Runs once per process, on the first kernel call (never at import)."""
    global _fresh_checked
    if _fresh_checked:
        return
    with _lock:
        if _fresh_checked:
            return
        _fresh_checked = True
        cache_dirs = sorted({c.cache_path for c in _caches})
        if not cache_dirs:  # compiled in memory: nothing on disk to keep fresh
            return
        try:
            digest = _sources_digest()
            modules = _modules()
            for cache_dir in cache_dirs:
                stamp = os.path.join(cache_dir, _STAMP)
                try:
                    with open(stamp) as f:
                        if f.read().strip() == digest:
                            continue
                except OSError:
                    pass
                _remove(os.path.join(cache_dir, name) for name in os.listdir(cache_dir)
                        if name.endswith((".nbi", ".nbc")) and name.split(".")[0] in modules)
                with open(stamp, "w") as f:
                    f.write(digest + "\n")
        except OSError:  # an odd cache location: Numba's own source check still applies
            pass
