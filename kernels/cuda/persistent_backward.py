"""The persistent backward kernel: the reverse loop of ``rnn_vjp`` (step 3 of ``backward``) in ONE
launch, the recurrent kernel's rows kept on chip.

The per-step backward (``backward``) runs, per reverse step ``i``, one pointwise launch and one
GEMM ``dz[i] @ U.T`` of ``B`` rows: latency-bound for small batches, like the forward's per-step
path. Here every block loads its rows of ``U`` into shared memory once and loops over all T
reverse steps itself, as the forward's persistent kernel (``persistent``) does over the forward
steps, with the forward's tiling (``persistent.Plan``, chosen by ``persistent.plan``).

Tiling: block ``(ub, bb)`` owns the batch rows ``[b0, b0 + BT)`` and the units ``[u0, u0 + HS)``.
Thread ``(bl, jl, ks)`` is one of ``KS`` threads that split the dot product of sample
``n = b0 + bl``'s row of ``dz[i + 1]`` (all ``G`` columns) with row ``j = u0 + jl`` of ``U``:
``through[n, j]``, the recurrent product's share of the cotangent of the h that step ``i``
produced. The owner thread (``ks == 0``) then runs what the per-step kernel does for ``(n, j)``
(``backward_unit.unit_step``: the masking rule and the cells' scalar ``backward`` functions) and
writes ``dz[i]`` for its unit; its running cotangents (``direct``, ``carry``, the LSTM's ``gc``)
stay in registers from the first step to the last, then go to ``direct`` and ``gc`` (the
gradients of the initial states).

Shared memory (dynamic, the kernel's dtype): the block's rows of ``U`` ``[HS, G]`` (a thread reads
along its row: consecutive addresses), one gate's columns of the block's rows of ``dz``
``[BT, H]`` (the dot runs gate by gate: the same budget as the forward, which keeps ``BT`` rows of
``h``), the partial sums ``[BT * HS, KS]``. That is never more than the forward's
(``shared_bytes`` <= ``persistent.shared_bytes``) with the same threads, so every tiling the
forward's size rule picks fits the backward too.

Per reverse step: (step > first) load gate g's columns of the block's ``dz[i + 1]`` rows ->
syncthreads -> partial dots -> syncthreads, for each gate; partial sums -> syncthreads -> owners
finish the step -> barrier. After the last step one more dot gives ``through`` for the initial
h. GRU without ``reset_after`` adds a second half, as its forward does: the owners write the
candidate's dz, a barrier, then ``d(r * h) = dz[i, :, 2H:] @ U_h.T`` the same way and the r gate
(``backward_unit.reset_step``), and the product with ``U_zr`` waits for the next step. GRU with
``reset_after`` reads ``dz_rec`` (the recurrent part's dz) for the product, the others ``dz``.

The barrier is ``cuda.syncthreads()`` when one block owns all units of its rows, else a grid sync
(cooperative launch): blocks exchange ``dz`` through global memory (it is the driver's ``dz``,
which the weight gradients need anyway). Within a step a block only reads rows of ``dz`` that it,
or the blocks of the same rows, wrote before the last barrier.

The dot products split over ``KS`` threads sum in another order than the per-step path's GEMM
(cuBLAS's, or NumPy's in the simulator): results agree to rounding, not bitwise.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import cuda

from ..cells import GRU, GRU_BEFORE, LSTM
from . import _runtime
from .backward_unit import reset_step, unit_step
from .persistent import GATE_GROUPS, Plan, _block_barrier, _grid_barrier, thread_place


def shared_elements(plan: Plan, units: int, kind: int) -> int:
    """Elements of dynamic shared memory a block of ``plan`` takes (see the module docstring)."""
    bt, hs, ks = plan.batch_tile, plan.unit_tile, plan.ksplit
    return GATE_GROUPS[kind] * hs * units + bt * units + bt * hs * ks


def shared_bytes(plan: Plan, units: int, kind: int, itemsize: int) -> int:
    return shared_elements(plan, units, kind) * itemsize


@cuda.jit(device=True)
def _load_unit_rows(sm, U, u0, HS, zero):
    """Rows [u0, u0 + HS) of U (H, G) into sm[jl * G + c] (zeros past the last unit)."""
    H = U.shape[0]
    G = U.shape[1]
    for idx in range(cuda.threadIdx.x, HS * G, cuda.blockDim.x):
        jl = idx // G
        col = idx - jl * G
        if u0 + jl < H:
            sm[idx] = U[u0 + jl, col]
        else:
            sm[idx] = zero


@cuda.jit(device=True)
def _dot(sm, rows_at, src, i, b0, BT, g_begin, g_end, H, G, bl, jl, ks, KS, pbase, zero):
    """The recurrent product of this thread's (sample, unit) over gates [g_begin, g_end):
    src[i, b0 + bl, g * H + k] * U[u0 + jl, g * H + k] summed over k and those gates; this thread
    sums k = ks, ks + KS, ... gate by gate, the KS partial sums then in order. Every thread of the
    block must call it (block barriers inside); every thread gets its (sample, unit)'s sum."""
    B = src.shape[1]
    acc = zero
    for g in range(g_begin, g_end):
        for idx in range(cuda.threadIdx.x, BT * H, cuda.blockDim.x):
            rl = idx // H
            k = idx - rl * H
            if b0 + rl < B:
                sm[rows_at + idx] = src[i, b0 + rl, g * H + k]
            else:
                sm[rows_at + idx] = zero
        cuda.syncthreads()
        for k in range(ks, H, KS):
            acc += sm[rows_at + bl * H + k] * sm[jl * G + g * H + k]
        cuda.syncthreads()
    sm[pbase + ks] = acc
    cuda.syncthreads()
    total = zero
    for q in range(KS):
        total += sm[pbase + q]
    return total


def _build(dtype, kind, coop):
    nbtype = numba.from_dtype(dtype)
    zero = dtype.type(0.0)
    through_gates = 2 if kind == GRU_BEFORE else GATE_GROUPS[kind]  # U columns of `through`
    unit = unit_step(kind)
    barrier = _grid_barrier if coop else _block_barrier

    def persistent_backward(a, h_prev, c, rec, valid, has_mask, zero_out, gy, U, direct_io,
                            gc_io, dz, dz_rec, activations, tiling):
        # Arrays as the per-step kernel's (processing order, (T, B, ...)); direct_io: the
        # cotangent of the last h in, of the initial h out; gc_io (LSTM) likewise for c.
        BT, HS, KS, nu = tiling.batch_tile, tiling.unit_tile, tiling.ksplit, tiling.unit_blocks
        u0 = (cuda.blockIdx.x % nu) * HS
        b0 = (cuda.blockIdx.x // nu) * BT
        T = gy.shape[0]
        B = gy.shape[1]
        H = U.shape[0]
        G = U.shape[1]
        rows_at = HS * G   # shared memory: U rows, one gate of dz rows, partial sums
        sm = cuda.shared.array(0, dtype=nbtype)
        _load_unit_rows(sm, U, u0, HS, zero)   # read after the first dot's barrier

        p, ks, bl, jl, n, j, owner = thread_place(KS, HS, u0, b0, B, H)
        pbase = rows_at + BT * H + p * KS
        act, ract = activations
        src = dz_rec if kind == GRU else dz

        direct = zero
        carry = zero
        gc = zero
        through = zero
        if owner:
            direct = direct_io[n, j]
            if kind == LSTM:
                gc = gc_io[n, j]
        for s in range(T + 1):
            i = T - 1 - s
            if s > 0:   # dz[i + 1] @ U.T, from every unit's dz of the step before
                through = _dot(sm, rows_at, src, i + 1, b0, BT, 0, through_gates, H, G, bl, jl,
                               ks, KS, pbase, zero)
            if s < T:
                ok = True
                if owner:
                    ok = not has_mask or valid[i, n]
                    direct, carry, gc, _ = unit(i, n, j, H, ok, zero_out, a, h_prev, c, rec,
                                                gy, direct + through, carry, gc, dz, dz_rec,
                                                act, ract)
                if kind == GRU_BEFORE:   # d(r * h) = cand @ U_h.T, from every unit's cand
                    barrier()
                    d_rh = _dot(sm, rows_at, dz, i, b0, BT, 2, 3, H, G, bl, jl, ks, KS, pbase,
                                zero)
                    if owner and ok:
                        direct = reset_step(i, n, j, H, a, h_prev, d_rh, dz, direct, ract)
                barrier()
        if owner:
            direct_io[n, j] = direct + through
            if kind == LSTM:
                gc_io[n, j] = gc

    persistent_backward.__name__ = persistent_backward.__qualname__ = "persistent_backward"
    return cuda.jit(persistent_backward)


def persistent_backward_kernel(dtype, kind: int, coop: bool):
    """The persistent backward kernel of cell kind ``kind`` for ``dtype`` (grid sync when
    ``coop``; compiled on its first launch)."""
    dtype = np.dtype(dtype)
    return _runtime.cached(("persistent_backward", dtype.str, kind, bool(coop)),
                           lambda: _build(dtype, kind, bool(coop)))
