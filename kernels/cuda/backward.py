"""The per-step backward kernels of the Keras cells: the vjp of the per-step forward, on the GPU.

The same algorithm as the CPU's fused backward (``kernels/cpu/backward.py``; read its docstring),
with the pointwise work in these kernels and every GEMM through CuPy (cuBLAS) in the driver
(``gpukb/backends/_cuda_vjp.py``). All arrays are contiguous and in processing order ``(T, B, ...)``;
``valid`` is the step mask in processing order (a ``(1, 1)`` placeholder without a mask).

1. ``states_before``: each sample's h before every step, from the forward's outputs (a masked
   step holds h). The driver then gets the gates' pre-activations of all steps with two GEMMs.
2. ``gates_kernel(dtype, kind)``: activates them in place, one thread per (step, sample, unit);
   the LSTM then runs its cell state forward (``lstm_cell_states``, one thread per (sample, unit)
   looping over time); GRU without reset_after writes ``r * h``, the driver multiplies it by
   ``U_h`` and ``gru_before_candidate`` activates the candidate.
3. The reverse loop, per step ``i``: ONE launch of ``step_kernel(dtype, kind)`` (thread = one
   (sample, unit)) turns the h cotangent (``direct + through``: the part outside the recurrent
   GEMM and the previous step's ``dz @ U.T``) into the pre-activations' cotangents ``dz[i]`` with
   the cells' scalar ``backward`` functions (``kernels/cells``, through ``backward_unit``, which
   the persistent variant shares), or, at a masked step, passes the state cotangents through and
   moves the output cotangent to the previous output (``carry``; dropped with
   ``zero_output_for_mask``); then the driver's GEMM ``dz[i] @ U.T`` into ``through``. GRU
   without reset_after needs two launches (``gru_before_reset`` after the GEMM ``cand @ U_h.T``
   has given d(r * h)), as its forward does. (``persistent_backward``: this loop in one launch.)
4. The weights' and inputs' gradients: GEMMs over all steps in the driver.

Every thread reads and writes only its own (sample, unit) of the per-sample arrays, so no thread
reads what another writes within a launch. The step and gates kernels are written once, with the
cell kind a compile-time constant; the others serve one kind or all.
"""

from __future__ import annotations

import numpy as np
from numba import cuda

from ..cells import GRU, GRU_BEFORE, LAYOUTS, LSTM, gru, lstm
from ..cells._jit import constant
from ..cells.activations import activate
from . import _runtime
from . import activations as _cuda_activations  # noqa: F401  (the table's tanh/sigmoid on CUDA)
from .backward_unit import reset_step, unit_step

THREADS = 128  # most threads per block (one thread per (sample, unit) or (step, sample, unit))
WARP = 32


def launch_shape(count: int) -> tuple:
    """(blocks, threads per block) for ``count`` threads: blocks of THREADS, or a single block of
    ``count`` rounded up to whole warps when that is fewer (idle threads cost the simulator
    as much as busy ones); no blocks for no threads."""
    threads = min(THREADS, -(-max(count, 1) // WARP) * WARP)
    return -(-count // threads), threads


@cuda.jit(device=True)
def _split(k, B, H):
    """(n, j): sample and unit of flat index ``k`` over a (B, H) grid."""
    n = k // H
    return n, k - n * H


@cuda.jit
def states_before(outputs, valid, has_mask, h0, h_prev):
    """h_prev[i, n, j]: unit j of sample n's h before step i (thread = one (n, j))."""
    k = cuda.grid(1)
    B, H = h0.shape
    if k >= B * H:
        return
    n, j = _split(k, B, H)
    held = h0[n, j]
    for i in range(h_prev.shape[0]):
        h_prev[i, n, j] = held
        if not has_mask or valid[i, n]:
            held = outputs[i, n, j]


@cuda.jit
def lstm_cell_states(a, c, valid, has_mask):
    """The LSTM's cell states c[i + 1] from the activated gates a (i, f, g, o) and c[0] (held at a
    masked step), thread = one (sample, unit) looping over time."""
    k = cuda.grid(1)
    B, H = c.shape[1], c.shape[2]
    if k >= B * H:
        return
    n, j = _split(k, B, H)
    for i in range(a.shape[0]):
        if has_mask and not valid[i, n]:
            c[i + 1, n, j] = c[i, n, j]
        else:
            c[i + 1, n, j] = lstm.cell_state(a[i, n, H + j], c[i, n, j], a[i, n, j],
                                             a[i, n, 2 * H + j])


@cuda.jit
def gru_before_candidate(z, rec_h, act):
    """GRU without reset_after: the candidate columns of z (x_h + b_h) plus rec_h
    ((r * h) @ U_h), activated; thread = one (step, sample, unit)."""
    k = cuda.grid(1)
    T, B, G = z.shape
    H = G // 3
    if k >= T * B * H:
        return
    m, j = _split(k, T * B, H)
    i, n = _split(m, T, B)
    z[i, n, 2 * H + j] = activate(act, z[i, n, 2 * H + j] + rec_h[i, n, j])


@cuda.jit
def gru_before_reset(i, a, h_prev, valid, has_mask, d_rh, dz, direct, part, ract):
    """GRU without reset_after, step i once d(r * h) = cand @ U_h.T is known: dz of r, the old
    h's share (added to ``direct``; ``backward_unit.reset_step``), and ``part``, the dz of z and r
    for the GEMM with their recurrent kernel (zeros at a masked step)."""
    k = cuda.grid(1)
    B, H = direct.shape
    if k >= B * H:
        return
    n, j = _split(k, B, H)
    if has_mask and not valid[i, n]:
        part[n, j] = constant(d_rh[n, j], 0.0)
        part[n, H + j] = constant(d_rh[n, j], 0.0)
        return
    direct[n, j] = reset_step(i, n, j, H, a, h_prev, d_rh[n, j], dz, direct[n, j], ract)
    part[n, j] = dz[i, n, j]
    part[n, H + j] = dz[i, n, H + j]


def _build_gates(dtype, kind):
    gates = LAYOUTS[kind].gates

    def gates_kernel(z, rec, h_prev, rh, activations):
        # z: (T, B, G) pre-activations (GRU kinds: their input part), activated in place (GRU
        # without reset_after: z and r only; r * h -> rh); rec: GRU's recurrent part.
        k = cuda.grid(1)
        T, B, G = z.shape
        H = G // gates
        if k >= T * B * H:
            return
        m, j = _split(k, T * B, H)
        i, n = _split(m, T, B)
        act, ract = activations
        if kind == LSTM:
            z[i, n, j] = activate(ract, z[i, n, j])
            z[i, n, H + j] = activate(ract, z[i, n, H + j])
            z[i, n, 2 * H + j] = activate(act, z[i, n, 2 * H + j])
            z[i, n, 3 * H + j] = activate(ract, z[i, n, 3 * H + j])
        elif kind == GRU:
            update = activate(ract, z[i, n, j] + rec[i, n, j])
            r = activate(ract, z[i, n, H + j] + rec[i, n, H + j])
            z[i, n, j] = update
            z[i, n, H + j] = r
            z[i, n, 2 * H + j] = activate(act, gru.candidate_input(z[i, n, 2 * H + j], r,
                                                                   rec[i, n, 2 * H + j]))
        elif kind == GRU_BEFORE:
            z[i, n, j] = activate(ract, z[i, n, j] + rec[i, n, j])
            r = activate(ract, z[i, n, H + j] + rec[i, n, H + j])
            z[i, n, H + j] = r
            rh[i, n, j] = gru.reset(r, h_prev[i, n, j])
        else:
            z[i, n, j] = activate(act, z[i, n, j])

    gates_kernel.__name__ = gates_kernel.__qualname__ = f"{LAYOUTS[kind].name}_backward_gates"
    return cuda.jit(gates_kernel)


def _build_step(dtype, kind):
    zero = dtype.type(0.0)
    unit = unit_step(kind)

    def step_kernel(i, a, h_prev, c, rec, valid, has_mask, zero_out, gy, direct, through, gc,
                    carry, dz, dz_rec, cand, activations):
        # a: activated gates (T, B, G); gy: output cotangents (T, B, H); direct + through: the
        # new h's cotangent (the part outside the recurrent GEMM, the GEMM's); direct is then
        # the old h's part outside the GEMM; gc: the LSTM's cell state cotangent, in place;
        # dz[i] (GRU: and dz_rec[i], the recurrent part's) written; carry: output cotangents
        # handed back by masked steps; cand: GRU without reset_after, the candidate's dz.
        k = cuda.grid(1)
        B, H = direct.shape
        if k >= B * H:
            return
        n, j = _split(k, B, H)
        act, ract = activations
        ok = not has_mask or valid[i, n]
        d, carried, dc, dpre = unit(i, n, j, H, ok, zero_out, a, h_prev, c, rec, gy,
                                    direct[n, j] + through[n, j], carry[n, j],
                                    gc[n, j] if kind == LSTM else zero, dz, dz_rec, act, ract)
        direct[n, j] = d
        carry[n, j] = carried
        if kind == LSTM:
            gc[n, j] = dc
        if kind == GRU_BEFORE:
            cand[n, j] = dpre

    step_kernel.__name__ = step_kernel.__qualname__ = f"{LAYOUTS[kind].name}_backward_step"
    return cuda.jit(step_kernel)


def gates_kernel(dtype, kind: int):
    """The gate-activation kernel of cell kind ``kind`` for ``dtype`` (compiled on first launch)."""
    dtype = np.dtype(dtype)
    return _runtime.cached(("backward_gates", dtype.str, kind), lambda: _build_gates(dtype, kind))


def step_kernel(dtype, kind: int):
    """The reverse loop's per-step kernel of cell kind ``kind`` for ``dtype``."""
    dtype = np.dtype(dtype)
    return _runtime.cached(("backward_step", dtype.str, kind), lambda: _build_step(dtype, kind))
