"""Products summed over many rows, ``Z[:, c0:c1] = A.T @ U[:, c0:c1]``, for the backward's
weight gradients (``kernel``: ``x.T @ dz``, ``recurrent_kernel``: ``h.T @ dz``).

A is ``(K, M)`` and U ``(K, N)``, read in place with any row strides: K runs over every
(sample, step) row, so transposing them first (what ``_gemm.fused_rows`` needs) would copy whole
sequences; only U's block of the current K-chunk is copied, contiguous, so that it stays in L1.
A's columns may come from two arrays (``A = [A1 | A2]``, row k of each at its own stride): the
LSTM's ``x`` and ``h`` against the same dz are one product, which reads dz once and gives each
packed block of it D + H rows of Z to serve (the two apart: 5-11% slower, 2 threads, 2026-12-04).
The micro-kernel (``_tile``) keeps an MR x (NV vectors) block of Z in registers over the chunk's
rows: per row it broadcasts MR consecutive entries of A's row and loads NV vectors of U's row. Columns that do not fill a whole vector block are summed by a plain loop.
Every element accumulates its K rows in order, so a result does not depend on the thread split.
"""

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from ._gemm import BIG_TILES, VECTOR_BYTES
from ._llvm_loop import carried_loop
from ._numba_cache import cached_njit
from ._rows import zero_row

_I64 = ir.IntType(64)
_I32 = ir.IntType(32)
NV = 2


def _make_tile(MR):
    """``z[r, v] += sum_k a[k * sk + r] * u[k * su + v]`` for r < MR and NV vectors v (element
    offsets from the addresses given; z's rows ``ldz`` apart)."""

    @intrinsic
    def tile(typingctx, zarr, z, ldz, a, sk, u, su, k):
        if not isinstance(zarr, types.Array) or zarr.dtype not in (types.float32, types.float64):
            return None
        fdt = zarr.dtype
        sig = types.void(zarr, *([types.int64] * 7))

        def codegen(context, builder, sig, args):
            is32 = fdt == types.float32
            fty = ir.FloatType() if is32 else ir.DoubleType()
            esz = 4 if is32 else 8
            VL = VECTOR_BYTES // esz
            vty = ir.VectorType(fty, VL)
            pf, pv = fty.as_pointer(), vty.as_pointer()
            (_, z_, ldz_, a_, sk_, u_, su_, k_) = args
            fma = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(vty, [vty, vty, vty]),
                f"llvm.fmuladd.v{VL}f{esz * 8}")
            splat_mask = ir.Constant(ir.VectorType(_I32, VL), [0] * VL)
            undef = ir.Constant(vty, ir.Undefined)
            c64 = lambda v: ir.Constant(_I64, v)  # noqa: E731

            def fptr(base, off):
                return builder.gep(builder.inttoptr(base, pf), [off])

            acc0 = [builder.load(builder.bitcast(fptr(z_, builder.add(
                builder.mul(c64(r), ldz_), c64(v * VL))), pv), align=esz)
                for r in range(MR) for v in range(NV)]
            def step(kk, phis):
                urow = builder.mul(kk, su_)
                us = [builder.load(builder.bitcast(fptr(u_, builder.add(urow, c64(v * VL))), pv),
                                   align=esz) for v in range(NV)]
                arow = builder.mul(kk, sk_)
                new = list(phis)
                for r in range(MR):
                    s = builder.load(fptr(a_, builder.add(arow, c64(r))), align=esz)
                    sv = builder.shuffle_vector(
                        builder.insert_element(undef, s, ir.Constant(_I32, 0)), undef, splat_mask)
                    for v in range(NV):
                        new[r * NV + v] = builder.call(fma, [sv, us[v], phis[r * NV + v]])
                return new

            out = carried_loop(builder, k_, acc0, step, "sums")
            for r in range(MR):
                for v in range(NV):
                    off = builder.add(builder.mul(c64(r), ldz_), c64(v * VL))
                    builder.store(out[r * NV + v], builder.bitcast(fptr(z_, off), pv), align=esz)
            return context.get_dummy_value()

        return sig, codegen

    return tile


@intrinsic
def _copy(typingctx, dst, src, nbytes):
    """memcpy(dst, src, nbytes) between addresses (llvm.memcpy: a few vector moves when nbytes
    is a constant after inlining). Element by element, the packing loop below took about 2 ns
    per element, 3.4 of the 4.8 ms of (3200, 64).T @ (3200, 512) on one thread."""
    if not all(isinstance(t, types.Integer) for t in (dst, src, nbytes)):
        return None

    def codegen(context, builder, sig, args):
        cgutils.raw_memcpy(builder, builder.inttoptr(args[0], cgutils.voidptr_t),
                           builder.inttoptr(args[1], cgutils.voidptr_t), args[2], 1)
        return context.get_dummy_value()

    return types.void(dst, src, nbytes), codegen


_tile8 = _make_tile(8)   # with AVX-512's 32 registers (_gemm.BIG_TILES)
_tile6 = _make_tile(6)
_tile4 = _make_tile(4)
_tile2 = _make_tile(2)
_tile1 = _make_tile(1)


# Rows of A and U per pass over Z: A's share (KC rows) stays in L2 and U's packed block (KC x NR)
# in L1 while every tile of Z goes over them.
_KC = 128


@cached_njit(error_model="numpy", fastmath={"contract"}, nogil=True)
def summed_products(z, a, sk, a2, sk2, m_split, u, su, K, c0, c1):
    """``z[m, c] = sum_k A[k, m] * u[k * su + c]`` for every row m of z and columns c0 <= c < c1,
    A's row k being ``a[k * sk:][:m_split]`` then ``a2[k * sk2:][:M - m_split]`` (a, a2, u: flat
    views of the operands; ``m_split = M`` when a2 is not used; z: (M, N) C-contiguous)."""
    for m in range(z.shape[0]):
        zero_row(z[m, c0:c1])
    _add_products(z, a, sk, 0, a2, sk2, 0, m_split, u, su, 1, 0, K, c0, c1,
                  _buffer(z, _block(z)), _buffer(z, 0))


@cached_njit(error_model="numpy", fastmath={"contract"}, nogil=True)
def summed_runs(z, a, sk, a_step, a2, sk2, a2_step, m_split, u, su, runs, u_step, K, c0, c1):
    """``z[:, c0:c1] +=`` the products of ``runs`` runs of K rows each, run j starting
    ``j * a_step`` elements into a (``j * a2_step`` into a2) and ``j * u_step`` into u (the rows of
    some steps of every sample, in a batch-major layout); run after run, each run's rows in
    order. A's rows as summed_products'."""
    _add_products(z, a, sk, a_step, a2, sk2, a2_step, m_split, u, su, runs, u_step, K, c0, c1,
                  _buffer(z, _block(z)), _buffer(z, z.shape[0] if runs > 1 else 0))


@cached_njit(error_model="numpy", inline="always")
def _buffer(z, per_row):
    """Room for _KC rows of ``per_row`` elements of z's dtype, plus a cache line to align them:
    U's block of a k-chunk, or A's rows of one. Made by _add_products' callers and passed in:
    Numba frees an array after its last use in a function, and _add_products only uses its
    buffers' addresses."""
    return np.empty(_KC * per_row + 64 // z.itemsize, z.dtype)


@cached_njit(error_model="numpy", inline="always")
def _block(z):
    return VECTOR_BYTES // z.itemsize * NV   # columns of U's block


@cached_njit(error_model="numpy", inline="always")
def _aligned(pointer):
    return (pointer + 63) // 64 * 64   # on a cache line (see _gemm.aligned_empty)


@cached_njit(error_model="numpy", inline="always")
def _tiles(z, zp0, ldz, ap0, ska, pa, NR, kc, m0, m1, es):
    """The tiles of rows [m0, m1) of Z's column block at zp0 (row 0): A's row m at
    ``ap0 + (m - m0) * es``, k rows ``ska`` elements apart; U's block packed at pa."""
    m = m0
    while m < m1:
        left = m1 - m
        zp = zp0 + m * ldz * es
        ap = ap0 + (m - m0) * es
        if BIG_TILES and left >= 8:
            _tile8(z, zp, ldz, ap, ska, pa, NR, kc)
            m += 8
        elif left >= 6:
            _tile6(z, zp, ldz, ap, ska, pa, NR, kc)
            m += 6
        elif left >= 4:
            _tile4(z, zp, ldz, ap, ska, pa, NR, kc)
            m += 4
        elif left >= 2:
            _tile2(z, zp, ldz, ap, ska, pa, NR, kc)
            m += 2
        else:
            _tile1(z, zp, ldz, ap, ska, pa, NR, kc)
            m += 1


@cached_njit(error_model="numpy", fastmath={"contract"}, nogil=True)
def _add_products(z, a, sk, a_step, a2, sk2, a2_step, m_split, u, su, runs, u_step, K, c0, c1,
                  panel, rows):
    """``z[m, c] += sum_r A[row(r), m] * u[row_u(r) + c]`` over the rows r of ``runs`` runs of K
    rows (row k of run j: ``j * a_step + k * sk`` in a for m < m_split, ``j * a2_step + k * sk2``
    in a2 for the others, ``j * u_step + k * su`` in u), each element adding its rows in that
    order. ``panel``, ``rows``: _buffer's for U's block and, with several runs, for A's rows."""
    M = z.shape[0]
    es = z.itemsize
    NR = VECTOR_BYTES // es * NV
    whole = c0 + (c1 - c0) // NR * NR
    ldz = z.shape[1]
    za = z.ctypes.data
    # U's block of a k-chunk, copied contiguous (kc x NR) before the tiles go over it: read in
    # place, each of its rows is a row of dz apart, and every tile of Z would stream it from L2
    # again; packed, it stays in L1 (same products in the same order: the same bits). With
    # several runs A's rows of the chunk are copied contiguous too (both parts side by side),
    # so that a chunk spans runs and Z is read and written once per chunk, not once per run.
    pa = _aligned(panel.ctypes.data)
    ra = _aligned(rows.ctypes.data)
    u0 = u.ctypes.data
    a0 = a.ctypes.data
    a20 = a2.ctypes.data
    total = runs * K
    u_rows = np.empty(_KC, np.int64)   # the chunk's rows' offsets in u, found once per chunk
    for k0 in range(0, total, _KC):
        kc = min(_KC, total - k0)
        if runs > 1:
            for k in range(kc):
                j, kk = divmod(k0 + k, K)
                u_rows[k] = j * u_step + kk * su
                _copy(ra + k * M * es, a0 + (j * a_step + kk * sk) * es, m_split * es)
                if m_split < M:
                    _copy(ra + (k * M + m_split) * es, a20 + (j * a2_step + kk * sk2) * es,
                          (M - m_split) * es)
        for c in range(c0, whole, NR):
            if runs > 1:
                for k in range(kc):
                    _copy(pa + k * NR * es, u0 + (u_rows[k] + c) * es, NR * es)
            else:
                for k in range(kc):
                    _copy(pa + k * NR * es, u0 + ((k0 + k) * su + c) * es, NR * es)
            zc = za + c * es
            if runs > 1:
                _tiles(z, zc, ldz, ra, M, pa, NR, kc, 0, M, es)
            else:   # one run: each part's rows read in place (summed_products' case)
                _tiles(z, zc, ldz, a0 + k0 * sk * es, sk, pa, NR, kc, 0, m_split, es)
                _tiles(z, zc, ldz, a20 + k0 * sk2 * es, sk2, pa, NR, kc, m_split, M, es)
    if whole < c1:   # the last columns, fewer than a vector block
        for r in range(total):
            j, kk = divmod(r, K)
            ar, ar2, ur = j * a_step + kk * sk, j * a2_step + kk * sk2, j * u_step + kk * su
            for m in range(M):
                v = a[ar + m] if m < m_split else a2[ar2 + m - m_split]
                for c in range(whole, c1):
                    z[m, c] += v * u[ur + c]


def block_columns(dtype):
    """Columns per vector block (the unit of a split of N over threads)."""
    return VECTOR_BYTES // np.dtype(dtype).itemsize * NV
