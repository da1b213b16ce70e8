"""Small loops along a row, written so that LLVM vectorises them.

A loop ``for j in range(u0, u1): dst[j] = src[j]`` indexes with a number that Numba cannot
prove non-negative, so every access carries its negative-index wraparound and the loop stays
scalar: about 1-2.5 ns per element on the development machine, against 0.1-0.3 ns over slices
indexed from 0 (``for j in range(n): d[j] = s[j]`` with ``d = dst[u0:u1]``). Numba's slice
assignment ``dst[a:b] = src[a:b]`` was as slow as the scalar loop (it checks for overlap).
The kernels' row loops therefore take slices first and index them from 0.
"""

from ._numba_cache import cached_njit


@cached_njit(error_model="numpy", inline="always")
def copy_row(dst, src):
    """dst[j] = src[j] for every j of dst (1-D, src at least as long)."""
    for j in range(dst.shape[0]):
        dst[j] = src[j]


@cached_njit(error_model="numpy", inline="always")
def zero_row(dst):
    """dst[j] = 0 for every j of dst (1-D)."""
    for j in range(dst.shape[0]):
        dst[j] = 0


@cached_njit(error_model="numpy", inline="always")
def add_row(dst, src):
    """dst[j] += src[j] for every j of dst (1-D, src at least as long)."""
    for j in range(dst.shape[0]):
        dst[j] += src[j]
