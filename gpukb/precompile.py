"""``gpukb precompile``: the fused CPU kernels compiled into Numba's disk cache before their
first use.

A process's first fused call of a cell kind and dtype compiles its kernels when Numba's disk
cache does not hold them yet: about 4 s for an LSTM's forward in float32 and 6 s more for its
gradients (2-core EPYC), paid by the first request a new server or container sees. This runs
each kernel once, on small made-up calls, so that it is compiled and written to the cache now
(or, when the cache already holds it, loaded), and says which.

Numba keys its cache on the source files, their directory and the CPU (model and features): run
it where the kernels will run (in a container image: built on that CPU type, with the same
installation path and ``NUMBA_CACHE_DIR`` at build and run time). Numba only uses a cache
directory it can write to (it checks at each process's start).
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np

CELLS = ("lstm", "gru", "simple_rnn")
DTYPES = ("float32", "float64")

# Two call sizes: one thread's loop (small batch) and the batch split over the threads, whose
# weight gradients the backward sums by another kernel.
_SIZES = ((2, 3, 4, 8), (64, 32, 32, 32))   # (B, T, D, H)


def _made_up_cells(name: str, dtype: np.dtype, D: int, H: int, rng) -> list:
    """The cells whose kernels ``name`` covers (a GRU both ways: reset_after True and False)."""
    import gpukb

    def weights(*shape):
        return (0.3 * rng.standard_normal(shape)).astype(dtype)

    if name == "lstm":
        return [gpukb.cells.lstm(weights(D, 4 * H), weights(H, 4 * H), weights(4 * H))]
    if name == "gru":
        return [gpukb.cells.gru(weights(D, 3 * H), weights(H, 3 * H), weights(2, 3 * H)),
                gpukb.cells.gru(weights(D, 3 * H), weights(H, 3 * H), weights(3 * H),
                                reset_after=False)]
    return [gpukb.cells.simple_rnn(weights(D, H), weights(H, H), weights(H))]


def _run(cell, B: int, T: int, D: int, H: int, dtype: np.dtype, gradients: bool, rng) -> None:
    import gpukb

    x = rng.standard_normal((B, T, D)).astype(dtype)
    states = [np.zeros((B, H), dtype) for _ in range(cell.n_states)]
    gpukb.rnn(cell, x, states, backend="cpu")
    if gradients:
        (_, outputs, _), pullback = gpukb.rnn_vjp(cell, x, states, backend="cpu")
        pullback(np.ones_like(outputs))


def _checked(values: list[str] | None, allowed: tuple[str, ...], what: str) -> list[str]:
    if values is None:
        return list(allowed)
    unknown = [v for v in values if v not in allowed]
    if unknown or not values:
        got = f"{', '.join(map(repr, unknown))} is not one" if unknown else "none given"
        raise ValueError(f"{what} must be one or more of {', '.join(allowed)} ({got}).")
    return list(dict.fromkeys(values))


def precompile(cells: list[str] | None = None, dtypes: list[str] | None = None, *,
               gradients: bool = True,
               report: Callable[[str], None] = print) -> list[tuple[str, str, int, int, float]]:
    """Compile (or load) the fused CPU kernels of ``cells`` (default: all of ``CELLS``) in
    ``dtypes`` (default: both), with their gradients' kernels unless ``gradients`` is False.
    Returns ``(cell, dtype, compiled, loaded, seconds)`` per pair: how many kernel signatures
    were compiled and written to the cache, and how many were loaded from it. Raises
    RuntimeError, after the work, when Numba had no cache directory it could write to (the
    kernels then compiled in memory and are lost with the process)."""
    cells = _checked(cells, CELLS, "cells")
    dtypes = _checked(dtypes, DTYPES, "dtypes")
    import warnings

    from gpukb.kernels.cpu import _numba_cache

    rng = np.random.default_rng(0)
    results = []
    with warnings.catch_warnings(record=True) as caught:   # no-cache warnings: one error below
        warnings.simplefilter("always", RuntimeWarning)
        for dtype_name in dtypes:
            dtype = np.dtype(dtype_name)
            for name in cells:
                loaded0, compiled0 = _numba_cache.cache_counts()
                start = time.perf_counter()
                for B, T, D, H in _SIZES:
                    for cell in _made_up_cells(name, dtype, D, H, rng):
                        _run(cell, B, T, D, H, dtype, gradients, rng)
                seconds = time.perf_counter() - start
                loaded, compiled = _numba_cache.cache_counts()
                results.append((name, dtype_name, compiled - compiled0, loaded - loaded0, seconds))
                report(f"{name:10s} {dtype_name:7s} {compiled - compiled0:3d} compiled, "
                       f"{loaded - loaded0:3d} loaded from the cache ({seconds:.1f} s)")
    locations = _numba_cache.cache_locations()
    if not locations:
        reasons = "; ".join(str(w.message) for w in caught) or "no cache location"
        raise RuntimeError(f"Numba has no disk cache to keep the kernels in ({reasons}).")
    for location in locations:
        report(f"Numba's cache: {location}")
    return results
