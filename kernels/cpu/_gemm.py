"""GEMM for the RNN kernels: a register-blocked micro-kernel written in LLVM IR.

``fused_rows`` computes, for rows [n0, n1),

    Z[n, :] = INIT[n, :] + A[n, :K] @ P

where P is a weight matrix packed once per kernel call into column panels (``pack``: panel p
holds columns [p*NR, (p+1)*NR) as a contiguous, zero-padded (K, NR) block, so the micro-kernel
streams it linearly). INIT is a broadcast bias row (ldi = 0) or Z itself (accumulate in
place). The kernels use it for:

- ``project_block``: bias + x_t @ kernel for a block of time steps at once (steps or batch
  rows as the GEMM's M, whichever is larger), into a buffer sized to stay in L2;
- each step: z_t += h @ recurrent_kernel, in place.

The micro-kernel (``_tile*``) keeps an MR x NR block of Z in vector registers across the whole
k loop (NR = 2 vectors: 32 float32 / 16 float64 columns where Numba compiles for AVX-512, 16 / 8
with AVX2 (``VECTOR_BYTES``); MR = 8 (AVX-512's 32 registers), 6 or 4 rows; 1-4 rows take 2-4
panels at once to keep enough accumulators in flight): each k loads the panel's vectors once and broadcasts MR scalars of A
into the FMAs. The vector width changes only how many columns one instruction covers, never the
arithmetic: results are bitwise the same with either. Plain Numba loops cannot do this (arrays
carry no no-alias information, so LLVM keeps accumulators in memory); with AVX2 vectors this
runs at 80-90 GFLOP/s float32 (about 40 float64) on one Zen 4 core, on par with OpenBLAS, and has no
per-call overhead for the tiny products of small batches. Batches of at most WIDE_MAX_ROWS rows
use one-row tiles over 8-vector panels (a quarter of the tile calls). Every tile accumulates k
in order, so a row's result is bitwise independent of the batch and of the thread split.

Why not one BLAS call per step: the call alone costs 2-3 us for 1x64x256, Numba's ``@`` needs
SciPy (not a gpukb dependency), and a multi-threaded BLAS fights the kernels' own threads (they
split the batch, or at small batch each step's units, themselves; see _common.run_chunks). A BLAS's idle threads also keep spinning on the cores after each call.

All pointers are integer addresses of C-contiguous arrays that the caller keeps alive.
"""

import math

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from ._llvm_loop import carried_loop
from ._numba_cache import cached_njit

_I64 = ir.IntType(64)
_I32 = ir.IntType(32)
# int64 constants for calls into fused_rows: a literal 0 or 2 would make Numba compile one more
# specialisation of that (large) function per literal pattern.
I0 = np.int64(0)
I2 = np.int64(2)
_PANEL_BLOCK_BYTES = 256 * 1024
_PACK_BLOCK_BYTES = 256 * 1024   # rows of u packed at a time (see pack)
WIDE_MAX_ROWS = 3  # up to this many batch rows, use one-row tiles over wide panels


def _vector_bytes():
    """64 where Numba compiles for a CPU with AVX-512 (NUMBA_CPU_FEATURES, else the host's), else
    32 (AVX2). On one core of the development machine's AVX-512 Xeon the 512-bit tiles run the
    recurrent GEMM of an LSTM at B=32, H=128 at about 117 GFLOP/s (``python -m
    gpukb.bench.anatomy``); without AVX-512, LLVM would split a 512-bit vector in two."""
    from numba.core import config
    from numba.core.codegen import get_host_cpu_features

    features = config.CPU_FEATURES if config.CPU_FEATURES is not None else get_host_cpu_features()
    return 64 if "+avx512f" in str(features).split(",") else 32


VECTOR_BYTES = _vector_bytes()
# A wide panel (one-row tiles) has 64 float32 / 32 float64 columns whatever the vector width, so
# that a unit split of a small batch still finds whole panels at H = 128.
WIDE_VECTORS = 256 // VECTOR_BYTES
# One-row tiles take this many wide panels at once: 8 accumulators in flight either way (one row
# has no other independent sums to hide the FMA latency behind).
_WIDE_PANELS = 8 // WIDE_VECTORS


def panel_vectors(rows):
    """Vectors per panel row: 2 (MR = 6/4/2/1-row tiles), or WIDE_VECTORS (one-row tiles, for a
    batch of at most WIDE_MAX_ROWS rows: 4-8 independent accumulators, fewer tile calls)."""
    return WIDE_VECTORS if rows <= WIDE_MAX_ROWS else 2


def panel_width(dtype, nv=2):
    """Columns per packed panel: nv vectors of VECTOR_BYTES."""
    return VECTOR_BYTES // np.dtype(dtype).itemsize * nv


def _make_tile(MR, NP, NV):
    """Intrinsic for an MR-row tile over NP adjacent panels of NV vectors each.

    Every output element is init + sum_k a[k] * u[k] accumulated in k order, one fused
    multiply-add at a time, whatever MR/NP: a row's result does not depend on its place in the
    batch, the batch size or the number of threads. NP > 1 gives small MR enough independent
    accumulators to hide the FMA latency.
    """

    @intrinsic
    def tile(typingctx, zarr, init, ldi, z, ldz, a, lda, u, k, ps):
        if not isinstance(zarr, types.Array) or zarr.dtype not in (types.float32,
                                                                    types.float64):
            return None
        fdt = zarr.dtype
        sig = types.void(zarr, *([types.int64] * 9))

        def codegen(context, builder, sig, args):
            is32 = fdt == types.float32
            fty = ir.FloatType() if is32 else ir.DoubleType()
            VL = VECTOR_BYTES // (4 if is32 else 8)
            NR = VL * NV
            esz = 4 if is32 else 8
            vty = ir.VectorType(fty, VL)
            pf = fty.as_pointer()
            pv = vty.as_pointer()
            (_, init_, ldi_, z_, ldz_, a_, lda_, u_, k_, ps_) = args
            # fmuladd: one FMA where the CPU has it, a multiply and an add where it has not
            fma = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(vty, [vty, vty, vty]),
                f"llvm.fmuladd.v{VL}f{esz * 8}")
            splat_mask = ir.Constant(ir.VectorType(_I32, VL), [0] * VL)
            undef = ir.Constant(vty, ir.Undefined)
            c64 = lambda v: ir.Constant(_I64, v)  # noqa: E731

            def fptr(base, off):
                return builder.gep(builder.inttoptr(base, pf), [off])

            def vload(base, off):
                return builder.load(builder.bitcast(fptr(base, off), pv), align=esz)

            def vstore(val, base, off):
                builder.store(val, builder.bitcast(fptr(base, off), pv), align=esz)

            def splat(x):
                return builder.shuffle_vector(
                    builder.insert_element(undef, x, ir.Constant(_I32, 0)), undef, splat_mask)

            # accumulator (r, q, v): row r, panel q, vector v; Z/INIT column q*NR + v*VL
            def col(q, v):
                return c64(q * NR + v * VL)

            acc0 = []
            for r in range(MR):
                rowoff = builder.mul(c64(r), ldi_)
                for q in range(NP):
                    for v in range(NV):
                        acc0.append(vload(init_, builder.add(rowoff, col(q, v))))
            def step(kk, phis):
                us = []
                uk = builder.mul(kk, c64(NR))
                for q in range(NP):
                    base = builder.add(builder.mul(c64(q), ps_), uk)
                    us.append([vload(u_, builder.add(base, c64(v * VL))) for v in range(NV)])
                new = list(phis)
                for r in range(MR):
                    sv = splat(builder.load(fptr(a_, builder.add(builder.mul(c64(r), lda_), kk)),
                                            align=esz))
                    for q in range(NP):
                        for v in range(NV):
                            i = (r * NP + q) * NV + v
                            new[i] = builder.call(fma, [sv, us[q][v], phis[i]])
                return new

            out = carried_loop(builder, k_, acc0, step, "tile")
            for r in range(MR):
                rowoff = builder.mul(c64(r), ldz_)
                for q in range(NP):
                    for v in range(NV):
                        vstore(out[(r * NP + q) * NV + v], z_, builder.add(rowoff, col(q, v)))
            return context.get_dummy_value()

        return sig, codegen

    return tile


# AVX-512 has 32 vector registers: an 8-row tile (16 accumulators) and a 4-row tile over two
# panels fit, loading each panel vector once for twice the FMAs of a 6-row or 4-row tile (the
# recurrent GEMM of a small batch is bound by streaming U). AVX2's 16 registers would spill them.
BIG_TILES = VECTOR_BYTES == 64
_tile8 = _make_tile(8, 1, 2)
_tile6 = _make_tile(6, 1, 2)
_tile4x2 = _make_tile(4, 2, 2)
_tile4 = _make_tile(4, 1, 2)
_tile2x2 = _make_tile(2, 2, 2)
_tile2 = _make_tile(2, 1, 2)
_tile1x4 = _make_tile(1, 4, 2)
_tile1 = _make_tile(1, 1, 2)
_tile1w = _make_tile(1, 1, WIDE_VECTORS)
_tile1wn = _make_tile(1, _WIDE_PANELS, WIDE_VECTORS)


def aligned_empty(shape, dtype, zeroed=False):
    """np.empty(shape, dtype) (np.zeros with ``zeroed``), its first element on a 64-byte boundary
    (a view into a slightly larger array). NumPy's allocations fall wherever malloc puts them, 0,
    16 or 48 bytes past a cache line on this machine from call to call; a panel that starts off a
    line makes every 512-bit load of the micro-kernel span two lines: one thread's recurrent GEMM
    at B=32, K=128, N=512 ran at 98 GFLOP/s aligned, 83-87 with the panels 16-32 bytes off.
    ``zeroed`` takes calloc's zero pages: a large buffer is not written here (its pages are
    zeroed by the system as the kernels' threads first touch them; clearing 512 KiB here took
    0.1-0.2 ms of a 3 ms call before any thread started)."""
    dt = np.dtype(dtype)
    n = math.prod(shape)
    buf = (np.zeros if zeroed else np.empty)(n + 64 // dt.itemsize, dt)
    start = (-buf.__array_interface__["data"][0] % 64) // dt.itemsize
    return buf[start:start + n].reshape(shape)


def pack(u, c0, ncols, NR):
    """Columns [c0, c0+ncols) of u (K, N) as zero-padded panels (ceil(ncols/NR), K, NR).
    NumPy, not a compiled function: a copy, so the same bits either way, and a process's first
    call has one compiled function less to load (with the np.zeros implementation it imports).
    Packing runs at every call, and an LSTM's U at H = 1024 is 16 MiB: the full panels are
    copied a block of about _PACK_BLOCK_BYTES of u's rows at a time, which stays in L2 while
    it is scattered over the panels (one strided copy of the whole took twice as long at H =
    512-1024: 11.8 against 5.9 ms for a 1024 x 4096 float32 U; plain copy 3.3)."""
    K = u.shape[0]
    npan = (ncols + NR - 1) // NR
    full = ncols // NR
    P = aligned_empty((npan, K, NR), u.dtype)
    rows = max(8, _PACK_BLOCK_BYTES // max(1, u.shape[1] * u.itemsize))
    for k0 in range(0, K, rows):
        k1 = min(K, k0 + rows)
        block = u[k0:k1, c0:c0 + full * NR].reshape(k1 - k0, full, NR)
        P[:full, k0:k1] = block.transpose(1, 0, 2)
    if full < npan:
        P[full] = 0
        P[full, :, :ncols - full * NR] = u[:, c0 + full * NR:c0 + ncols]
    return P


def pack_transposed(u, NR):
    """u.T (u: (N, K)) as ``pack(u.T, 0, N, NR)`` would give it, in one strided copy (no
    transposed intermediate): panel p holds rows [p*NR, (p+1)*NR) of u, transposed."""
    N, K = u.shape
    npan = (N + NR - 1) // NR
    full = N // NR
    P = aligned_empty((npan, K, NR), u.dtype)
    P[:full] = u[:full * NR].reshape(full, NR, K).transpose(0, 2, 1)
    if full < npan:
        P[full] = 0
        P[full, :, :N - full * NR] = u[full * NR:].T
    return P


@cached_njit(error_model="numpy", nogil=True, _nrt=False)   # see _common.NO_REFCOUNT
def fused_rows(zarr, z, ldz, init, ldi, a, lda, p, k, npan, nv, n0, n1):
    """Z[n] = INIT[n] + A[n] @ P for rows n0 <= n < n1, over the first npan panels of P.

    Addresses (int64) point at row 0 / column 0 of z, init and a, and at P's first panel; ld*
    are row strides in elements (ldi = 0 broadcasts one init row, e.g. a bias; init = z
    accumulates in place). nv: vectors per panel row (2 or 8, see panel_vectors). ``zarr``
    only carries the dtype.
    """
    es = zarr.itemsize
    NR = VECTOR_BYTES // es * nv
    ps = k * NR                      # elements per panel
    # Panels in blocks of about _PANEL_BLOCK_BYTES of weights, so that a block stays in L2
    # while every row tile goes over it.
    pb = max(1, _PANEL_BLOCK_BYTES // max(1, ps * es))
    for pb0 in range(0, npan, pb):
        pb1 = min(npan, pb0 + pb)
        n = n0
        while n < n1:
            left = n1 - n
            zr = z + n * ldz * es
            ir_ = init + n * ldi * es
            ar = a + n * lda * es
            if nv != 2:
                p_ = pb0
                while p_ + _WIDE_PANELS <= pb1:
                    off = p_ * NR * es
                    _tile1wn(zarr, ir_ + off, ldi, zr + off, ldz, ar, lda, p + p_ * ps * es,
                             k, ps)
                    p_ += _WIDE_PANELS
                while p_ < pb1:
                    off = p_ * NR * es
                    _tile1w(zarr, ir_ + off, ldi, zr + off, ldz, ar, lda, p + p_ * ps * es,
                            k, ps)
                    p_ += 1
                n += 1
            elif BIG_TILES and left >= 8:
                for p_ in range(pb0, pb1):
                    off = p_ * NR * es
                    _tile8(zarr, ir_ + off, ldi, zr + off, ldz, ar, lda, p + p_ * ps * es,
                           k, ps)
                n += 8
            elif left >= 6:
                for p_ in range(pb0, pb1):
                    off = p_ * NR * es
                    _tile6(zarr, ir_ + off, ldi, zr + off, ldz, ar, lda, p + p_ * ps * es,
                           k, ps)
                n += 6
            elif left >= 4:
                p_ = pb0
                while BIG_TILES and p_ + 2 <= pb1:
                    off = p_ * NR * es
                    _tile4x2(zarr, ir_ + off, ldi, zr + off, ldz, ar, lda, p + p_ * ps * es,
                             k, ps)
                    p_ += 2
                while p_ < pb1:
                    off = p_ * NR * es
                    _tile4(zarr, ir_ + off, ldi, zr + off, ldz, ar, lda, p + p_ * ps * es,
                           k, ps)
                    p_ += 1
                n += 4
            elif left >= 2:
                p_ = pb0
                while p_ + 2 <= pb1:
                    off = p_ * NR * es
                    _tile2x2(zarr, ir_ + off, ldi, zr + off, ldz, ar, lda, p + p_ * ps * es,
                             k, ps)
                    p_ += 2
                if p_ < pb1:
                    off = p_ * NR * es
                    _tile2(zarr, ir_ + off, ldi, zr + off, ldz, ar, lda, p + p_ * ps * es,
                           k, ps)
                n += 2
            else:
                p_ = pb0
                while p_ + 4 <= pb1:
                    off = p_ * NR * es
                    _tile1x4(zarr, ir_ + off, ldi, zr + off, ldz, ar, lda, p + p_ * ps * es,
                             k, ps)
                    p_ += 4
                while p_ < pb1:
                    off = p_ * NR * es
                    _tile1(zarr, ir_ + off, ldi, zr + off, ldz, ar, lda, p + p_ * ps * es,
                           k, ps)
                    p_ += 1
                n += 1


@cached_njit(error_model="numpy", inline="always")
def ad(a):
    """Address of a C-contiguous array's data as int64 (one integer type for all pointers)."""
    return np.int64(a.ctypes.data)


@cached_njit(error_model="numpy", inline="always")
def gate_columns(zarr, z, ldz, init, ldi, a, lda, P, k, nv, n0, n1, gates, H, u0, u1):
    """``fused_rows`` over the columns g*H + [u0, u1) of every gate g (P: the packed array): the
    part of a step that one thread of a unit split computes (see _common.unit_chunks, which
    splits only where every gate's units lie on whole panels). All units: one call over every
    panel, as the plain fused_rows."""
    es = zarr.itemsize
    NR = P.shape[2]
    if u0 == 0 and u1 == H:
        fused_rows(zarr, z, ldz, init, ldi, a, lda, ad(P), k, P.shape[0], nv, n0, n1)
        return
    for g in range(gates):
        c0 = g * H + u0
        fused_rows(zarr, z + c0 * es, ldz, init + c0 * es, ldi, a, lda,
                   ad(P) + (c0 // NR) * k * NR * es, k, (u1 - u0) // NR, nv, n0, n1)


@cached_njit(error_model="numpy", inline="always")
def gate_columns_reversed(zarr, z, ldz, init, ldi, a, lda, P, k, nv, n0, n1, gates, H, u0, u1):
    """``gate_columns`` over the same panels in the opposite order (blocks of about
    _PANEL_BLOCK_BYTES, the last first). The time loops alternate the two orders from step to
    step: a recurrent kernel a little larger than a cache, streamed in one order every step,
    misses it at every panel (the oldest panel is always the next one read), while in zig-zag
    the panels read last are read first in the next step, still cached. Each output element is
    the same sum either way."""
    es = zarr.itemsize
    NR = P.shape[2]
    ps = k * NR
    pb = max(1, _PANEL_BLOCK_BYTES // max(1, ps * es))
    whole = u0 == 0 and u1 == H
    parts = 1 if whole else gates
    for g in range(parts - 1, -1, -1):
        first = 0 if whole else (g * H + u0) // NR
        npan = P.shape[0] if whole else (u1 - u0) // NR
        p1 = npan
        while p1 > 0:
            p0 = max(0, p1 - pb)
            off = (first + p0) * NR * es
            fused_rows(zarr, z + off, ldz, init + off, ldi, a, lda, ad(P) + (first + p0) * ps * es,
                       k, p1 - p0, nv, n0, n1)
            p1 = p0


@cached_njit(error_model="numpy", inline="always")
def step_columns(step, zarr, z, ldz, init, ldi, a, lda, P, k, nv, n0, n1, gates, H, u0, u1):
    """The recurrent product of time step ``step``: ``gate_columns`` on even steps,
    ``gate_columns_reversed`` on odd ones (zig-zag, see there)."""
    if step % 2:
        gate_columns_reversed(zarr, z, ldz, init, ldi, a, lda, P, k, nv, n0, n1, gates, H, u0, u1)
    else:
        gate_columns(zarr, z, ldz, init, ldi, a, lda, P, k, nv, n0, n1, gates, H, u0, u1)


@cached_njit(error_model="numpy", inline="always")
def project_block(x, x_tm, go_back, PW, bias, xpb, s0, s1, n0, n1, gates, H, u0, u1):
    """Input projection of processing steps [s0, s1) for rows [n0, n1) (units [u0, u1) of
    every gate, see gate_columns):

        xpb[s - s0, n, :] = bias + x[t(s), n] @ W,   t(s) = T - 1 - s if go_back else s

    with W packed as 2-vector panels (PW). Whichever of steps / rows is longer becomes the
    GEMM's row dimension, so that small batches still get the 6-row tiles.
    """
    B = x.shape[1] if x_tm else x.shape[0]
    T = x.shape[0] if x_tm else x.shape[1]
    D = x.shape[2]
    es = x.itemsize
    Gp = xpb.shape[2]
    tstride = B * D if x_tm else D        # elements from x[t, n] to x[t + 1, n]
    nstride = D if x_tm else T * D        # elements from x[t, n] to x[t, n + 1]
    xa = ad(x)
    za = ad(xpb)
    ba = ad(bias)
    m = s1 - s0
    if n1 - n0 >= m:
        for s in range(s0, s1):
            t = T - 1 - s if go_back else s
            a = xa + t * tstride * es
            gate_columns(xpb, za + (s - s0) * B * Gp * es, Gp, ba, I0, a, nstride, PW, D, I2,
                         n0, n1, gates, H, u0, u1)
    else:
        t0 = T - 1 - s0 if go_back else s0
        lda = -tstride if go_back else tstride
        for n in range(n0, n1):
            a = xa + (t0 * tstride + n * nstride) * es
            gate_columns(xpb, za + n * Gp * es, B * Gp, ba, I0, a, lda, PW, D, I2, I0, m,
                         gates, H, u0, u1)
