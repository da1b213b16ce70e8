"""GEMM for the RNN kernels: a register-blocked micro-kernel written in LLVM IR.

``fused_rows`` computes, for rows [n0, n1),

    Z[n, :] = INIT[n, :] + A1[n, :K1] @ P1 + A2[n, :K2] @ P2

where P1/P2 are weights packed once per kernel call into column panels (``pack``: panel p holds
columns [p*NR, (p+1)*NR) as a contiguous, zero-padded (K, NR) block, so the micro-kernel streams
it linearly). INIT may be a broadcast bias row (ldi = 0) or Z itself (accumulate in place).
The kernels use it twice:

- ``project_block``: the input projection bias + x_t @ kernel for a block of time steps at once
  (steps or batch rows as the GEMM's M, whichever is larger), into a buffer sized to stay in L2;
- per step: z_t += h @ recurrent_kernel, in place.

The micro-kernel (``_tile*``) is an MR x NR block of Z held in vector registers across the whole
k loop (NR = 2 AVX2 vectors = 16 float32 / 8 float64 columns; MR = 6, 4, 2 or 1 rows): each k
loads the panel's vectors once and broadcasts MR scalars of A into MR*2 FMAs. Plain Numba loops
cannot do this (arrays carry no no-alias information, so LLVM keeps accumulators in memory);
this one runs at 80-90 GFLOP/s float32 (about 40 float64) on one Zen 4 core, on par with
OpenBLAS, and has no per-call overhead for the tiny products of small batches. Batches of at
most WIDE_MAX_ROWS rows use one-row tiles over 8-vector panels instead (8 independent
accumulators, a quarter of the tile calls).

Why not one BLAS call per step: the call alone costs 2-3 us for 1x64x256, Numba's ``@`` needs
SciPy (not a gpukb dependency), and a multi-threaded BLAS fights the kernels' own threads (they
split the batch instead, each thread running the whole time loop on its rows; see
_common.run_chunks). A BLAS's idle threads also keep spinning on the cores after each call.

All pointers are integer addresses of C-contiguous arrays that the caller keeps alive.
"""

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

_I64 = ir.IntType(64)
_I32 = ir.IntType(32)
# int64 constants for calls into fused_rows: a literal 0 or 2 would make Numba compile one more
# specialisation of that (large) function per literal pattern.
I0 = np.int64(0)
I2 = np.int64(2)
_PANEL_BLOCK_BYTES = 256 * 1024
WIDE_MAX_ROWS = 3  # up to this many batch rows, use one-row tiles over wide panels


def panel_vectors(rows):
    """Vectors per panel row: 2 (MR = 6/4/2/1-row tiles), or 8 (one-row tiles, for a batch of
    at most WIDE_MAX_ROWS rows: 8 independent accumulators and 4x fewer tile calls)."""
    return 8 if rows <= WIDE_MAX_ROWS else 2


def panel_width(dtype, nv=2):
    """Columns per packed panel: nv AVX2 vectors of float32 (8) or float64 (4)."""
    return (8 if np.dtype(dtype).itemsize == 4 else 4) * nv


def _make_tile(MR, KS, NV):
    """Intrinsic for an MR-row tile of NV vectors per row; KS independent accumulator sets
    over k (latency hiding when MR * NV is small)."""

    @intrinsic
    def tile(typingctx, zarr, init, ldi, z, ldz, a1, lda1, u1, k1, a2, lda2, u2, k2):
        if not isinstance(zarr, types.Array) or zarr.dtype not in (types.float32,
                                                                    types.float64):
            return None
        fdt = zarr.dtype
        sig = types.void(zarr, *([types.int64] * 12))

        def codegen(context, builder, sig, args):
            is32 = fdt == types.float32
            fty = ir.FloatType() if is32 else ir.DoubleType()
            VL = 8 if is32 else 4
            NR = VL * NV
            esz = 4 if is32 else 8
            vty = ir.VectorType(fty, VL)
            pf = fty.as_pointer()
            pv = vty.as_pointer()
            (_, init_, ldi_, z_, ldz_, a1_, lda1_, u1_, k1_, a2_, lda2_, u2_, k2_) = args
            fma = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(vty, [vty, vty, vty]),
                f"llvm.fma.v{VL}f{esz * 8}")
            splat_mask = ir.Constant(ir.VectorType(_I32, VL), [0] * VL)
            undef = ir.Constant(vty, ir.Undefined)
            c64 = lambda v: ir.Constant(_I64, v)  # noqa: E731

            def fptr(base, off):
                return builder.gep(builder.inttoptr(base, pf), [off])

            def vload(base, off):
                return builder.load(builder.bitcast(fptr(base, off), pv), align=esz)

            def vstore(val, base, off):
                builder.store(val, builder.bitcast(fptr(base, off), pv), align=esz)

            def splat(s):
                return builder.shuffle_vector(
                    builder.insert_element(undef, s, ir.Constant(_I32, 0)), undef, splat_mask)

            def loop(sets, a_, lda_, u_, ntrip, ks, k0):
                """Run ntrip iterations, each handling ks consecutive k (k = k0 + it*ks + q)
                into accumulator set q. Returns the new sets and the k after the loop."""
                pre = builder.block
                fn = builder.function
                body = fn.append_basic_block("tile.body")
                done = fn.append_basic_block("tile.done")
                builder.cbranch(builder.icmp_signed(">", ntrip, c64(0)), body, done)
                builder.position_at_end(body)
                it = builder.phi(_I64)
                it.add_incoming(c64(0), pre)
                phis = []
                for accs in sets[:ks]:
                    row = []
                    for x in accs:
                        p = builder.phi(vty)
                        p.add_incoming(x, pre)
                        row.append(p)
                    phis.append(row)
                kbase = builder.add(k0, builder.mul(it, c64(ks)))
                new = []
                for q in range(ks):
                    k = builder.add(kbase, c64(q))
                    uoff = builder.mul(k, c64(NR))
                    us = [vload(u_, builder.add(uoff, c64(v * VL))) for v in range(NV)]
                    accs = list(phis[q])
                    for r in range(MR):
                        aoff = builder.add(builder.mul(c64(r), lda_), k)
                        sv = splat(builder.load(fptr(a_, aoff), align=esz))
                        for v in range(NV):
                            i = r * NV + v
                            accs[i] = builder.call(fma, [sv, us[v], accs[i]])
                    new.append(accs)
                itn = builder.add(it, c64(1))
                endb = builder.block
                it.add_incoming(itn, endb)
                for prow, nrow in zip(phis, new):
                    for p, x in zip(prow, nrow):
                        p.add_incoming(x, endb)
                builder.cbranch(builder.icmp_signed("<", itn, ntrip), body, done)
                builder.position_at_end(done)
                out = []
                for q, accs in enumerate(sets):
                    if q < ks:
                        row = []
                        for x, y in zip(accs, new[q]):
                            p = builder.phi(vty)
                            p.add_incoming(x, pre)
                            p.add_incoming(y, endb)
                            row.append(p)
                        out.append(row)
                    else:
                        out.append(accs)
                kend = builder.add(k0, builder.mul(ntrip, c64(ks)))
                return out, kend

            def product(sets, a_, lda_, u_, k_):
                if KS > 1:
                    main = builder.sdiv(k_, c64(KS))
                    sets, kend = loop(sets, a_, lda_, u_, main, KS, c64(0))
                    rest = builder.sub(k_, kend)
                    sets, _ = loop(sets, a_, lda_, u_, rest, 1, kend)
                else:
                    sets, _ = loop(sets, a_, lda_, u_, k_, 1, c64(0))
                return sets

            zero = ir.Constant(vty, [ir.Constant(fty, 0.0)] * VL)
            first = []
            for r in range(MR):
                for v in range(NV):
                    first.append(vload(init_, builder.add(builder.mul(c64(r), ldi_), c64(v * VL))))
            sets = [first] + [[zero] * (MR * NV) for _ in range(KS - 1)]
            sets = product(sets, a1_, lda1_, u1_, k1_)
            sets = product(sets, a2_, lda2_, u2_, k2_)
            acc = sets[0]
            for q in range(1, KS):
                acc = [builder.fadd(x, y) for x, y in zip(acc, sets[q])]
            for r in range(MR):
                for v in range(NV):
                    off = builder.add(builder.mul(c64(r), ldz_), c64(v * VL))
                    vstore(acc[r * NV + v], z_, off)
            return context.get_dummy_value()

        return sig, codegen

    return tile


_tile6 = _make_tile(6, 1, 2)
_tile4 = _make_tile(4, 1, 2)
_tile2 = _make_tile(2, 2, 2)
_tile1 = _make_tile(1, 4, 2)
_tile1w = _make_tile(1, 1, 8)


@njit(error_model="numpy", cache=True)
def pack(u, c0, ncols, NR):
    """Columns [c0, c0+ncols) of u (K, N) as zero-padded panels (ceil(ncols/NR), K, NR)."""
    K = u.shape[0]
    npan = (ncols + NR - 1) // NR
    P = np.zeros((npan, K, NR), u.dtype)
    for p in range(npan):
        for k in range(K):
            for c in range(NR):
                j = p * NR + c
                if j < ncols:
                    P[p, k, c] = u[k, c0 + j]
    return P


@njit(error_model="numpy", cache=True, nogil=True)
def fused_rows(zarr, z, ldz, init, ldi, a1, lda1, p1, k1, np1, a2, lda2, p2, k2, np2,
               npan, nv, n0, n1):
    """Z[n] = INIT[n] + A1[n] @ P1 + A2[n] @ P2 for rows n0 <= n < n1 and panels < npan.

    Addresses (int64) point at row 0 / column 0 of each operand (z, init, a1, a2) and at the
    first panel of p1 / p2; ld* are row strides in elements (ldi = 0 broadcasts one init row,
    e.g. a bias). Panels p >= np1 (np2) skip the first (second) product, whose panels stop
    there. nv: vectors per panel row (2 or 8, see panel_vectors). ``zarr`` only carries the
    dtype.
    """
    es = zarr.itemsize
    NR = (8 if es == 4 else 4) * nv
    s1 = k1 * NR * es
    s2 = k2 * NR * es
    # Panels in blocks of about _PANEL_BLOCK_BYTES of weights, so that a block stays in L2
    # while every row tile goes over it.
    pb = max(1, _PANEL_BLOCK_BYTES // max(1, (k1 + k2) * NR * es))
    for pb0 in range(0, npan, pb):
        pb1 = min(npan, pb0 + pb)
        n = n0
        while n < n1:
            left = n1 - n
            if nv != 2:
                mr = 0
            else:
                mr = 6 if left >= 6 else (4 if left >= 4 else (2 if left >= 2 else 1))
            zr = z + n * ldz * es
            ir_ = init + n * ldi * es
            ar1 = a1 + n * lda1 * es
            ar2 = a2 + n * lda2 * es
            for p in range(pb0, pb1):
                off = p * NR * es
                kk1 = k1 if p < np1 else 0
                kk2 = k2 if p < np2 else 0
                if mr == 6:
                    _tile6(zarr, ir_ + off, ldi, zr + off, ldz, ar1, lda1, p1 + p * s1, kk1,
                           ar2, lda2, p2 + p * s2, kk2)
                elif mr == 4:
                    _tile4(zarr, ir_ + off, ldi, zr + off, ldz, ar1, lda1, p1 + p * s1, kk1,
                           ar2, lda2, p2 + p * s2, kk2)
                elif mr == 2:
                    _tile2(zarr, ir_ + off, ldi, zr + off, ldz, ar1, lda1, p1 + p * s1, kk1,
                           ar2, lda2, p2 + p * s2, kk2)
                elif mr == 1:
                    _tile1(zarr, ir_ + off, ldi, zr + off, ldz, ar1, lda1, p1 + p * s1, kk1,
                           ar2, lda2, p2 + p * s2, kk2)
                else:
                    _tile1w(zarr, ir_ + off, ldi, zr + off, ldz, ar1, lda1, p1 + p * s1,
                            kk1, ar2, lda2, p2 + p * s2, kk2)
            n += max(mr, 1)


@njit(error_model="numpy", cache=True, inline="always")
def ad(a):
    """Address of a C-contiguous array's data as int64 (one integer type for all pointers)."""
    return np.int64(a.ctypes.data)


@njit(error_model="numpy", cache=True, inline="always")
def masked_output(orow, hr, zero_out, seen):
    """Output row of a masked step: zeros, or the previous output (= h) once a step was seen."""
    if zero_out or not seen:
        for j in range(orow.shape[0]):
            orow[j] = 0
    else:
        for j in range(orow.shape[0]):
            orow[j] = hr[j]


@njit(error_model="numpy", cache=True, inline="always")
def project_block(x, x_tm, go_back, PW, bias, xpb, s0, s1, n0, n1):
    """Input projection of processing steps [s0, s1) for rows [n0, n1):

        xpb[s - s0, n, :] = bias + x[t(s), n] @ W,   t(s) = T - 1 - s if go_back else s

    with W packed as 2-vector panels (PW). Whichever of steps / rows is longer becomes the
    GEMM's row dimension, so that small batches still get the 6-row tiles.
    """
    B = x.shape[1] if x_tm else x.shape[0]
    T = x.shape[0] if x_tm else x.shape[1]
    D = x.shape[2]
    es = x.itemsize
    Gp = xpb.shape[2]
    npan = PW.shape[0]
    tstride = B * D if x_tm else D        # elements from x[t, n] to x[t + 1, n]
    nstride = D if x_tm else T * D        # elements from x[t, n] to x[t, n + 1]
    xa = ad(x)
    za = ad(xpb)
    ba = ad(bias)
    pa = ad(PW)
    m = s1 - s0
    if n1 - n0 >= m:
        for s in range(s0, s1):
            t = T - 1 - s if go_back else s
            a = xa + t * tstride * es
            fused_rows(xpb, za + (s - s0) * B * Gp * es, Gp, ba, I0, a, nstride, pa, D, npan,
                       a, nstride, pa, I0, I0, npan, I2, n0, n1)
    else:
        t0 = T - 1 - s0 if go_back else s0
        lda = -tstride if go_back else tstride
        for n in range(n0, n1):
            a = xa + (t0 * tstride + n * nstride) * es
            fused_rows(xpb, za + n * Gp * es, B * Gp, ba, I0, a, lda, pa, D, npan,
                       a, lda, pa, I0, I0, npan, I2, I0, m)
