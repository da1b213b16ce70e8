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
through global memory ``rh`` and a barrier, then ``(r * h) . U_h``. The owner threads compute
their unit's step with ``unit`` (the cell definitions of ``kernels/cells``), as the per-step
kernel does. The kernel is written once (one device function per phase), with the cell kind a
compile-time constant; it takes the call's flags as a ``kernels.options.LoopOptions`` and its
tiling as the ``Plan`` itself.

The barrier is ``cuda.syncthreads()`` when one block owns all units of its rows (``nu == 1``),
else a grid sync (``cuda.cg.this_grid().sync()``, cooperative launch): blocks exchange ``h``
through global memory. Within a step a block only reads rows that it, or (``nu > 1``) the blocks
of the same rows, wrote before the last barrier.

Numba's CUDA simulator runs blocks one after another and cannot sync a grid of several blocks;
``tests/cuda_sim/grid_sync.py`` runs a simulated launch with all its blocks at once and real grid
barriers, so CI tests the multi-block tilings too (and the tests marked ``gpu`` on a real GPU).
"""

from __future__ import annotations

from typing import NamedTuple

import numba
import numpy as np
from numba import cuda

from ..cells import GRU_BEFORE, LAYOUTS, LSTM
from . import _runtime
from .unit import held_output, reset_gates, store, unit_update

# NG = gate column groups of U per unit, by cell kind (kernels/cells).
GATE_GROUPS = {layout.kind: layout.gates for layout in LAYOUTS}

# ---- the size rule ---------------------------------------------------------------------------
# Measured on an H200 (asv_bench/results-gpu/2026-12-04-h200-2/sweep.jsonl: float32 LSTM,
# every unit tile at B in 1..32, H in 64..512). A step of the persistent kernel costs 7-10 us at
# B=1 whatever the tiling (a grid barrier is ~1.2 us of it); above that the time grows with the
# work per block, so many small blocks beat few large ones: at (8, 128) 2 units a block (64
# blocks) took 9.4 us a step where 16 units (8 blocks) took 24.2. The persistent kernel is used
# when B <= PERSISTENT_MAX_BATCH and a tiling fits the budgets below (at (16, 256) it took 18.3 us
# a step, the per-step path about 40); otherwise the per-step path (cuBLAS GEMM + fused step
# kernel per step) runs.
PERSISTENT_MAX_BATCH = 32
# The planner's first choice: the smallest unit tile giving a block at least this many (row,
# unit) pairs (B=1: 4 units; B=8: 1 unit), within the block budget; best or within 8% of the best
# tiling at every measured shape.
PERSISTENT_MIN_PAIRS = 4
# At most this many (row, unit) pairs in all: one block owns every unit, no grid sync (below the
# measured shapes: kept from the first rule, not measured).
PERSISTENT_ONE_BLOCK_PAIRS = 128
# Dynamic shared memory per block: 48 KiB is what a launch gets without opting in to more
# (cudaFuncAttributeMaxDynamicSharedMemorySize); placeholder.
PERSISTENT_SHARED_BYTES = 48 * 1024
# Threads per block: the planner never exceeds this. 256 is also a hard ceiling for launchability:
# 256 threads x 255 registers (the most a thread can use) fit the 64 K registers of an SM, and
# this kernel takes 116-194 registers on sm_90 (``python -m gpukb.tools.ptx_check``), so
# 1024 threads would fail to launch ("too many resources requested").
PERSISTENT_THREADS = 256
# Blocks of a cooperative grid per SM that the planner assumes can be co-resident. One is always
# true for <= 256 threads and <= 48 KiB of shared memory; placeholder.
PERSISTENT_BLOCKS_PER_SM = 1
# Largest split of a dot product over threads.
PERSISTENT_MAX_KSPLIT = 32


class Plan(NamedTuple):
    """A tiling of the persistent kernel; see the module docstring. (A NamedTuple: the kernel
    takes it as one argument.)"""

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
        # Small unit tiles first (many small blocks: see the size rule above), whole H last; whole
        # H first when the problem is tiny (one block, no grid sync).
        smallest = -(-PERSISTENT_MIN_PAIRS // bt)
        tiles = [1 << e for e in range(units.bit_length()) if smallest <= (1 << e) < units]
        whole = [units]
        candidates = whole + tiles if bt * units <= PERSISTENT_ONE_BLOCK_PAIRS else tiles + whole
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


# ---- the kernel: its phases, then the time loop -----------------------------------------------

@cuda.jit(device=True)
def _block_barrier():
    cuda.syncthreads()


@cuda.jit(device=True)
def _grid_barrier():
    cuda.cg.this_grid().sync()


@cuda.jit(device=True)
def thread_place(KS, HS, u0, b0, B, H):
    """This thread's place in a persistent block, forward or backward: ``(p, ks, bl, jl, n, j,
    owner)``: its (row, unit) pair p and slice ks of the KS-way split dot, the pair's block row
    bl and unit jl, the global row n and unit j, and whether it owns (n, j) (finishes its step)."""
    p = cuda.threadIdx.x // KS
    ks = cuda.threadIdx.x - p * KS
    bl = p // HS
    jl = p - bl * HS
    n = b0 + bl
    j = u0 + jl
    return p, ks, bl, jl, n, j, ks == 0 and n < B and j < H


@cuda.jit(device=True)
def _load_weights(sm, U, u0, HS, size, zero):
    """The block's slice of U into shared memory, transposed (reads along k are consecutive):
    sm[col * H + k] = U[k, g * H + u0 + jl] for col = g * HS + jl; zeros past the last unit."""
    H = U.shape[0]
    for idx in range(cuda.threadIdx.x, size, cuda.blockDim.x):
        col = idx // H
        k = idx - col * H
        g = col // HS
        jl = col - g * HS
        if u0 + jl < H:
            sm[idx] = U[k, g * H + u0 + jl]
        else:
            sm[idx] = zero


@cuda.jit(device=True)
def _load_rows(sm, at, rows, b0, BT, zero):
    """Rows [b0, b0 + BT) of ``rows`` (B, H) into sm[at:] (zeros past the last row), then a block
    barrier."""
    B = rows.shape[0]
    H = rows.shape[1]
    for idx in range(cuda.threadIdx.x, BT * H, cuda.blockDim.x):
        rl = idx // H
        k = idx - rl * H
        if b0 + rl < B:
            sm[at + idx] = rows[b0 + rl, k]
        else:
            sm[at + idx] = zero
    cuda.syncthreads()


@cuda.jit(device=True)
def _partial_dots(sm, row_at, H, HS, jl, ks, KS, pbase, g_begin, g_end, zero):
    """This thread's share (k = ks, ks + KS, ...) of the dot products of its row with its unit's U
    columns of gates [g_begin, g_end), into its partial sums; then a block barrier."""
    for g in range(g_begin, g_end):
        acc = zero
        for k in range(ks, H, KS):
            acc += sm[row_at + k] * sm[(g * HS + jl) * H + k]
        sm[pbase + g * KS + ks] = acc
    cuda.syncthreads()


@cuda.jit(device=True)
def _gate_sum(sm, pbase, KS, g, used, zero):
    """The recurrent sum of gate g of a unit (its KS partial sums, in order); zero when not used."""
    acc = zero
    if used:
        for q in range(KS):
            acc += sm[pbase + g * KS + q]
    return acc


def _build(dtype, kind, coop):
    nbtype = numba.from_dtype(dtype)
    zero = dtype.type(0.0)
    gates = GATE_GROUPS[kind]
    first_half = 2 if kind == GRU_BEFORE else gates  # gates summed before r * h is known
    update = unit_update(kind)
    barrier = _grid_barrier if coop else _block_barrier

    @cuda.jit
    def persistent(xproj, U, bias_x, bias_r, hbuf, c, rh, out, mask, seen, options, has_mask,
                   activations, tiling):
        BT, HS, KS, nu = tiling.batch_tile, tiling.unit_tile, tiling.ksplit, tiling.unit_blocks
        u0 = (cuda.blockIdx.x % nu) * HS
        b0 = (cuda.blockIdx.x // nu) * BT
        B = hbuf.shape[1]
        H = hbuf.shape[2]
        tm = options.time_major
        T = xproj.shape[0] if tm else xproj.shape[1]
        rows_at = gates * HS * H   # shared memory: U slice, h rows, partial sums
        sm = cuda.shared.array(0, dtype=nbtype)
        _load_weights(sm, U, u0, HS, rows_at, zero)

        p, ks, bl, jl, n, j, owner = thread_place(KS, HS, u0, b0, B, H)
        row_at = rows_at + bl * H
        pbase = rows_at + BT * H + p * gates * KS
        act, ract = activations

        for s in range(T):
            t = T - 1 - s if options.go_backwards else s
            _load_rows(sm, rows_at, hbuf[s % 2], b0, BT, zero)
            _partial_dots(sm, row_at, H, HS, jl, ks, KS, pbase, 0, first_half, zero)
            hold = zero
            valid = True
            z = zero
            if owner:
                hold = sm[row_at + j]
                if has_mask:
                    valid = mask[t, n]
                if kind == GRU_BEFORE:
                    z, rh[n, j] = reset_gates(xproj, tm, t, n, j, H, bias_x,
                                              _gate_sum(sm, pbase, KS, 0, True, zero),
                                              _gate_sum(sm, pbase, KS, 1, True, zero), hold, ract)
            if kind == GRU_BEFORE:   # the second half: (r * h) @ U_h, from every unit's r * h
                barrier()
                _load_rows(sm, rows_at, rh, b0, BT, zero)
                _partial_dots(sm, row_at, H, HS, jl, ks, KS, pbase, 2, 3, zero)

            if owner:
                if valid:
                    if has_mask:
                        seen[n] = True
                    sums = (_gate_sum(sm, pbase, KS, 0, kind != GRU_BEFORE, zero),
                            _gate_sum(sm, pbase, KS, 1, gates > 1 and kind != GRU_BEFORE, zero),
                            _gate_sum(sm, pbase, KS, 2, gates > 2, zero),
                            _gate_sum(sm, pbase, KS, 3, gates > 3, zero))
                    c_old = c[n, j] if kind == LSTM else zero
                    h_new, c_new = update(xproj, tm, t, n, j, H, bias_x, bias_r, sums, hold,
                                          c_old, z, act, ract)
                    if kind == LSTM:
                        c[n, j] = c_new
                    output = h_new
                else:
                    h_new = hold
                    output = held_output(hold, seen[n], options.zero_output_for_mask)
                hbuf[1 - s % 2, n, j] = h_new
                if options.return_all_outputs:
                    store(out, tm, s, n, j, output)
                elif s == T - 1:
                    store(out, tm, 0, n, j, output)
            barrier()

    return persistent


def persistent_kernel(dtype, kind: int, coop: bool):
    """The persistent kernel of cell kind ``kind`` for ``dtype`` (grid sync when ``coop``)."""
    dtype = np.dtype(dtype)
    return _runtime.cached(("persistent", dtype.str, kind, bool(coop)),
                           lambda: _build(dtype, kind, bool(coop)))
