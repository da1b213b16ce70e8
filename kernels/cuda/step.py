"""The per-step kernel: gates + masking + state hold + output write, one launch per step.

Its driver (``gpukb/backends/_cuda_cells.py``) computes, per processing step ``s`` reading input
time ``t``: ``rec = h @ U`` (cuBLAS GEMM through CuPy), then launches ``step_kernel(dtype, kind)``
over ``B * H`` threads (thread = one (sample ``n``, unit ``j``)). Each thread

- at a masked (n, t) keeps the state and writes the masked output (``unit.held_output``: zeros
  with ``zero_output_for_mask``, else the held ``h`` once a step of sample n was processed
  (``seen[n]``), zeros before);
- else adds the input projection (``xproj``: ``x @ W`` of all steps, one GEMM before the loop),
  the biases and ``rec``, applies the cell's update (``unit.unit_update``), writes the new state
  in place (``rec`` already holds ``h @ U``) and the output into ``out`` at ``slot`` when
  ``write``.

``seen[n]`` is only written at a valid step and only read at a masked one, so within a launch no
thread reads what another writes.

The kernel is written once; the cell kind is a compile-time constant. Arrays a kind does not use
(``c`` but for LSTM, ``bias_r`` but for GRU, ``zbuf`` but for GRU_BEFORE) are small placeholders.
GRU with ``reset_after=False`` needs ``(r * h) @ U_h`` after ``r`` is known: ``gru_gates``
writes ``z`` and ``r * h``, the driver runs that GEMM, then the step kernel finishes the step with
``rec = (r * h) @ U_h`` (two launches, the only exception).
"""

from __future__ import annotations

import numpy as np
from numba import cuda

from ..cells import GRU_BEFORE, LAYOUTS, LSTM
from . import _runtime
from .unit import held_output, reset_gates, store, unit_update

THREADS = 128  # threads per block of the per-step kernels (one thread per (sample, unit))


def blocks_for(count: int) -> int:
    return (count + THREADS - 1) // THREADS


@cuda.jit(device=True)
def _unit_of_thread(h):
    """(n, j, inside): the (sample, unit) of this thread, and whether it has one."""
    i = cuda.grid(1)
    H = h.shape[1]
    n = i // H
    return n, i - n * H, i < h.shape[0] * H


def _build_step(dtype, kind):
    update = unit_update(kind)
    gates = LAYOUTS[kind].gates
    zero = dtype.type(0.0)

    def step(xproj, t, rec, bias_x, bias_r, h, c, zbuf, out, slot, write, mask, seen, options,
             has_mask, activations):
        n, j, inside = _unit_of_thread(h)
        if not inside:
            return
        tm = options.time_major
        if has_mask:
            if not mask[t, n]:
                if write:
                    store(out, tm, slot, n, j,
                          held_output(h[n, j], seen[n], options.zero_output_for_mask))
                return
            seen[n] = True
        H = h.shape[1]
        if kind == GRU_BEFORE:   # rec = (r * h) @ U_h, (B, H)
            sums = (zero, zero, rec[n, j], zero)
            z = zbuf[n, j]
        else:
            sums = (rec[n, j], rec[n, H + j] if gates > 1 else zero,
                    rec[n, 2 * H + j] if gates > 2 else zero,
                    rec[n, 3 * H + j] if gates > 3 else zero)
            z = zero
        c_old = c[n, j] if kind == LSTM else zero
        act, ract = activations
        h_new, c_new = update(xproj, tm, t, n, j, H, bias_x, bias_r, sums, h[n, j], c_old, z,
                              act, ract)
        if kind == LSTM:
            c[n, j] = c_new
        h[n, j] = h_new
        if write:
            store(out, tm, slot, n, j, h_new)

    step.__name__ = step.__qualname__ = f"{LAYOUTS[kind].name}_step"  # names it in ptx_check
    return cuda.jit(step)


@cuda.jit
def gru_gates(xproj, t, rec, bias_x, h, zbuf, rh, options, activations):
    """GRU with reset_after=False, first half: rec = h @ U[:, :2H]; z -> zbuf, r * h -> rh."""
    n, j, inside = _unit_of_thread(h)
    if not inside:
        return
    H = h.shape[1]
    zbuf[n, j], rh[n, j] = reset_gates(xproj, options.time_major, t, n, j, H, bias_x, rec[n, j],
                                       rec[n, H + j], h[n, j], activations[1])


def step_kernel(dtype, kind: int):
    """The per-step kernel of cell kind ``kind`` for ``dtype`` (compiled on its first launch)."""
    dtype = np.dtype(dtype)
    return _runtime.cached(("step", dtype.str, kind), lambda: _build_step(dtype, kind))
