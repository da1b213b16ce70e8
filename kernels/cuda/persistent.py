"""The persistent kernel: the whole sequence in ONE launch, recurrent weights kept on chip.

For small batches the per-step path is latency-bound (a GEMM and a kernel launch per step for a
few rows of work). Here every block loads its slice of the recurrent kernel ``U`` into shared
memory once and loops over all T steps itself.

Tiling (chosen by ``plan``): block ``(ub, bb)`` owns the batch rows ``[bb*BT, bb*BT + BT)`` and the
units ``[ub*HS, ub*HS + HS)`` (all gates of those units). Its ``BT*HS*KS`` threads split each dot
product ``h[n] . U[:, col]`` over ``KS`` slices of ``k``; partial sums meet in shared memory.

Shared memory (dynamic, the kernel's dtype): ``U`` slice transposed ``[NG*HS, H]`` (reads along
``k`` are consecutive, so conflict-free), the block's rows of ``h`` ``[BT, H]``, partial sums
``[BT*HS, NG, KS]``.

Per step: load ``h`` rows (global double buffer ``hbuf[s % 2]``) -> syncthreads -> partial dots ->
syncthreads -> owner threads (``ks == 0``) finish gates, masking, output and write
``hbuf[(s+1) % 2]`` -> barrier. GRU with ``reset_after=False`` adds a second half: ``r * h`` goes
through global memory ``rh`` and a barrier, then ``(r * h) . U_h``.

The barrier is ``cuda.syncthreads()`` when one block owns all units of its rows (``nu == 1``),
else a grid sync (``cuda.cg.this_grid().sync()``, cooperative launch): blocks exchange ``h``
through global memory. Within a step a block only reads rows that it, or (``nu > 1``) the blocks
of the same rows, wrote before the last barrier.

Numba's CUDA simulator runs blocks one after another and cannot sync a grid of several blocks;
``tests/cuda_sim/grid_sync.py`` runs a simulated launch with all its blocks at once and real grid
barriers, so CI tests the multi-block tilings too (and the tests marked ``gpu`` on a real GPU).
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np
from numba import cuda

from ..cells import GRU, GRU_BEFORE, LAYOUTS, LSTM
from . import _runtime
from .activations import device_activation

# NG = gate column groups of U per unit, by cell kind (kernels/cells).
GATE_GROUPS = {layout.kind: layout.gates for layout in LAYOUTS}

# ---- the size rule ---------------------------------------------------------------------------
# PLACEHOLDERS until measured on a GPU (no GPU was available when this was written): the
# persistent kernel is used when B <= PERSISTENT_MAX_BATCH and a tiling fits the budgets below;
# otherwise the per-step path (cuBLAS GEMM + fused step kernel per step) runs. To be tuned on an
# H100 against cuDNN at (B, H) in (1,256), (8,256), (32,512), T=100 (see the README, CUDA backend).
PERSISTENT_MAX_BATCH = 8
# Dynamic shared memory per block: 48 KiB is what a launch gets without opting in to more
# (cudaFuncAttributeMaxDynamicSharedMemorySize); placeholder.
PERSISTENT_SHARED_BYTES = 48 * 1024
# Threads per block: the planner never exceeds this. 256 is also a hard ceiling for launchability:
# 256 threads x 255 registers (the most a thread can use) fit the 64 K registers of an SM, and
# this kernel takes 116-194 registers on sm_90 (``python -m gpukb.kernels.cuda.ptx_check``), so
# 1024 threads would fail to launch ("too many resources requested").
PERSISTENT_THREADS = 256
# Blocks of a cooperative grid per SM that the planner assumes can be co-resident. One is always
# true for <= 256 threads and <= 48 KiB of shared memory; placeholder.
PERSISTENT_BLOCKS_PER_SM = 1
# Largest split of a dot product over threads.
PERSISTENT_MAX_KSPLIT = 32


@dataclass(frozen=True)
class Plan:
    """A tiling of the persistent kernel; see the module docstring."""

    batch_tile: int   # BT: batch rows per block
    unit_tile: int    # HS: units per block
    ksplit: int       # KS: threads per dot product
    batch_blocks: int  # nb
    unit_blocks: int   # nu
    coop: bool         # grid sync between steps (needed when unit_blocks > 1)

    @property
    def threads(self) -> int:
        return self.batch_tile * self.unit_tile * self.ksplit

    @property
    def blocks(self) -> int:
        return self.batch_blocks * self.unit_blocks

    def shared_elements(self, units: int, groups: int) -> int:
        bt, hs, ks = self.batch_tile, self.unit_tile, self.ksplit
        return groups * hs * units + bt * units + bt * hs * groups * ks


def shared_bytes(plan: Plan, units: int, kind: int, itemsize: int) -> int:
    return plan.shared_elements(units, GATE_GROUPS[kind]) * itemsize


def plan(batch: int, units: int, kind: int, itemsize: int, *, max_batch=None, shared=None,
         threads=None, max_blocks=None, unit_tile=None, ksplit=None, batch_tile=None,
         coop=None) -> Plan | None:
    """The tiling for (B, H), or None when the persistent kernel should not run.

    Keyword arguments override the module's budgets (tests use them to force tilings).
    """
    max_batch = PERSISTENT_MAX_BATCH if max_batch is None else max_batch
    shared = PERSISTENT_SHARED_BYTES if shared is None else shared
    threads = PERSISTENT_THREADS if threads is None else threads
    if max_blocks is None:
        max_blocks = _runtime.sm_count() * PERSISTENT_BLOCKS_PER_SM
    if batch < 1 or units < 1 or batch > max_batch:
        return None
    groups = GATE_GROUPS[kind]
    bt = batch_tile if batch_tile is not None else min(batch, max_batch)
    nb = -(-batch // bt)

    def fits(hs, ks):
        p = Plan(bt, hs, ks, nb, -(-units // hs), False)
        return p.threads <= threads and p.shared_elements(units, groups) * itemsize <= shared

    if unit_tile is not None:
        candidates = [unit_tile]
    else:
        # Whole H in one block first (no grid sync), then powers of two downwards.
        candidates = [units] + [1 << e for e in range(units.bit_length(), -1, -1) if (1 << e) < units]
    for hs in candidates:
        if bt * hs > threads:
            continue
        ks = ksplit if ksplit is not None else max(1, min(PERSISTENT_MAX_KSPLIT, units, threads // (bt * hs)))
        if not fits(hs, ks):
            continue
        nu = -(-units // hs)
        use_coop = nu > 1 if coop is None else (coop or nu > 1)
        if use_coop and nb * nu > max_blocks:
            continue
        return Plan(bt, hs, ks, nb, nu, use_coop)
    return None


# ---- the kernel --------------------------------------------------------------------------------

@cuda.jit(device=True)
def _block_barrier():
    cuda.syncthreads()


@cuda.jit(device=True)
def _grid_barrier():
    cuda.cg.this_grid().sync()


def _build(dtype, kind, coop):
    act = device_activation(dtype)
    nbtype = numba.from_dtype(dtype)
    zero = dtype.type(0.0)
    one = dtype.type(1.0)
    NG = GATE_GROUPS[kind]
    NG1 = 2 if kind == GRU_BEFORE else NG  # gate groups of the first half
    KIND = kind
    barrier = _grid_barrier if coop else _block_barrier

    @cuda.jit
    def persistent(xproj, xtm, go_back, U, bias_x, bias_r, hbuf, c, rh, out, otm, ret_all,
                   mask, has_mask, seen, zero_out, a_act, r_act, BT, HS, KS, nu):
        tid = cuda.threadIdx.x
        NT = cuda.blockDim.x
        bid = cuda.blockIdx.x
        ub = bid % nu
        bb = bid // nu
        u0 = ub * HS
        b0 = bb * BT
        B = hbuf.shape[1]
        H = hbuf.shape[2]
        T = xproj.shape[0] if xtm else xproj.shape[1]
        NGHS = NG * HS
        usz = NGHS * H
        hsz = BT * H
        sm = cuda.shared.array(0, dtype=nbtype)

        # U slice, transposed: sm[col * H + k] = U[k, g * H + u0 + jl], col = g * HS + jl.
        for idx in range(tid, usz, NT):
            col = idx // H
            k = idx - col * H
            g = col // HS
            jl = col - g * HS
            if u0 + jl < H:
                sm[idx] = U[k, g * H + u0 + jl]
            else:
                sm[idx] = zero

        p = tid // KS
        ks = tid - p * KS
        bl = p // HS
        jl = p - bl * HS
        n = b0 + bl
        j = u0 + jl
        owner = ks == 0 and n < B and j < H
        pbase = usz + hsz + p * NG * KS

        for s in range(T):
            t = T - 1 - s if go_back else s
            cur = s % 2
            nxt = 1 - cur
            write = ret_all or s == T - 1
            slot = s if ret_all else 0

            for idx in range(tid, hsz, NT):
                rl = idx // H
                k = idx - rl * H
                if b0 + rl < B:
                    sm[usz + idx] = hbuf[cur, b0 + rl, k]
                else:
                    sm[usz + idx] = zero
            cuda.syncthreads()

            for g in range(NG1):
                acc = zero
                for k in range(ks, H, KS):
                    acc += sm[usz + bl * H + k] * sm[(g * HS + jl) * H + k]
                sm[pbase + g * KS + ks] = acc
            cuda.syncthreads()

            hold = zero
            valid = True
            z = zero
            if owner:
                hold = sm[usz + bl * H + jl + u0]
                if has_mask:
                    valid = mask[t, n]
                if KIND == GRU_BEFORE:
                    rz = zero
                    rr = zero
                    for q in range(KS):
                        rz += sm[pbase + q]
                        rr += sm[pbase + KS + q]
                    xz = (xproj[t, n, j] if xtm else xproj[n, t, j]) + bias_x[j]
                    xr = (xproj[t, n, H + j] if xtm else xproj[n, t, H + j]) + bias_x[H + j]
                    z = act(r_act, xz + rz)
                    r = act(r_act, xr + rr)
                    rh[n, j] = r * hold

            if KIND == GRU_BEFORE:
                barrier()
                for idx in range(tid, hsz, NT):
                    rl = idx // H
                    k = idx - rl * H
                    if b0 + rl < B:
                        sm[usz + idx] = rh[b0 + rl, k]
                    else:
                        sm[usz + idx] = zero
                cuda.syncthreads()
                acc = zero
                for k in range(ks, H, KS):
                    acc += sm[usz + bl * H + k] * sm[(2 * HS + jl) * H + k]
                sm[pbase + 2 * KS + ks] = acc
                cuda.syncthreads()

            if owner:
                if valid:
                    if has_mask:
                        seen[n] = True
                    if KIND == LSTM:
                        s0 = zero
                        s1 = zero
                        s2 = zero
                        s3 = zero
                        for q in range(KS):
                            s0 += sm[pbase + q]
                            s1 += sm[pbase + KS + q]
                            s2 += sm[pbase + 2 * KS + q]
                            s3 += sm[pbase + 3 * KS + q]
                        if xtm:
                            x0 = xproj[t, n, j]
                            x1 = xproj[t, n, H + j]
                            x2 = xproj[t, n, 2 * H + j]
                            x3 = xproj[t, n, 3 * H + j]
                        else:
                            x0 = xproj[n, t, j]
                            x1 = xproj[n, t, H + j]
                            x2 = xproj[n, t, 2 * H + j]
                            x3 = xproj[n, t, 3 * H + j]
                        gi = act(r_act, x0 + s0 + bias_x[j])
                        gf = act(r_act, x1 + s1 + bias_x[H + j])
                        gc = act(a_act, x2 + s2 + bias_x[2 * H + j])
                        go = act(r_act, x3 + s3 + bias_x[3 * H + j])
                        cn = gf * c[n, j] + gi * gc
                        c[n, j] = cn
                        hn = go * act(a_act, cn)
                    elif KIND == GRU:
                        s0 = zero
                        s1 = zero
                        s2 = zero
                        for q in range(KS):
                            s0 += sm[pbase + q]
                            s1 += sm[pbase + KS + q]
                            s2 += sm[pbase + 2 * KS + q]
                        if xtm:
                            x0 = xproj[t, n, j]
                            x1 = xproj[t, n, H + j]
                            x2 = xproj[t, n, 2 * H + j]
                        else:
                            x0 = xproj[n, t, j]
                            x1 = xproj[n, t, H + j]
                            x2 = xproj[n, t, 2 * H + j]
                        zz = act(r_act, x0 + bias_x[j] + s0 + bias_r[j])
                        rr = act(r_act, x1 + bias_x[H + j] + s1 + bias_r[H + j])
                        hh = act(a_act, x2 + bias_x[2 * H + j] + rr * (s2 + bias_r[2 * H + j]))
                        hn = zz * hold + (one - zz) * hh
                    elif KIND == GRU_BEFORE:
                        s2 = zero
                        for q in range(KS):
                            s2 += sm[pbase + 2 * KS + q]
                        x2 = (xproj[t, n, 2 * H + j] if xtm else xproj[n, t, 2 * H + j]) + bias_x[2 * H + j]
                        hh = act(a_act, x2 + s2)
                        hn = z * hold + (one - z) * hh
                    else:
                        s0 = zero
                        for q in range(KS):
                            s0 += sm[pbase + q]
                        x0 = xproj[t, n, j] if xtm else xproj[n, t, j]
                        hn = act(a_act, x0 + bias_x[j] + s0)
                    hbuf[nxt, n, j] = hn
                    if write:
                        if otm:
                            out[slot, n, j] = hn
                        else:
                            out[n, slot, j] = hn
                else:
                    hbuf[nxt, n, j] = hold
                    if write:
                        v = zero
                        if not zero_out and seen[n]:
                            v = hold
                        if otm:
                            out[slot, n, j] = v
                        else:
                            out[n, slot, j] = v
            barrier()

    return persistent


def persistent_kernel(dtype, kind: int, coop: bool):
    dtype = np.dtype(dtype)
    return _runtime.cached(("persistent", dtype.str, kind, bool(coop)),
                           lambda: _build(dtype, kind, bool(coop)))
