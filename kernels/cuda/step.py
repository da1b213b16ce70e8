"""Fused per-step kernels: gates + masking + state hold + output write, one launch per step.

The driver (``cells.py``) computes, per processing step ``s`` reading input time ``t``:
``rec = h @ U`` (cuBLAS GEMM through CuPy), then launches ONE of these kernels over ``B * H``
threads (thread = one (sample ``n``, unit ``j``)). Each thread

- reads ``xproj`` (the input projection ``x @ W`` of all steps, one GEMM before the loop) at
  ``[t, n]`` (time-major) or ``[n, t]``, adds the biases and ``rec``, applies the activations;
- at a masked (n, t) keeps the state and writes the masked output: zeros with
  ``zero_output_for_mask``, else the previous masked output, which for these cells is the held
  ``h`` once a step of sample n was processed (``seen[n]``) and zeros before;
- writes the new state in place (``rec`` already holds ``h @ U``) and the output into the
  preallocated buffer ``out`` at ``[slot, n]`` / ``[n, slot]`` when ``write``.

``seen[n]`` is only written at a valid step and only read at a masked one, so within a launch no
thread reads what another writes.

GRU with ``reset_after=False`` needs ``(r * h) @ U_h`` after ``r`` is known: ``gru_gates`` writes
``z`` and ``r * h``, the driver runs that GEMM, then ``gru_finish`` finishes the step (two
launches, the only exception).
"""

from __future__ import annotations

import numpy as np
from numba import cuda

from . import _runtime
from .activations import device_activation


def _build(dtype):
    act = device_activation(dtype)
    zero = dtype.type(0.0)
    one = dtype.type(1.0)

    @cuda.jit(device=True)
    def xval(xproj, xtm, t, n, k):
        if xtm:
            return xproj[t, n, k]
        return xproj[n, t, k]

    @cuda.jit(device=True)
    def store(out, otm, slot, n, j, v):
        if otm:
            out[slot, n, j] = v
        else:
            out[n, slot, j] = v

    @cuda.jit(device=True)
    def masked(h, out, otm, slot, write, mask, has_mask, t, n, j, seen, zero_out):
        """True when (n, t) is masked (after writing its output); marks n seen otherwise."""
        if not has_mask:
            return False
        if mask[t, n]:
            seen[n] = True
            return False
        if write:
            v = zero
            if not zero_out and seen[n]:
                v = h[n, j]
            store(out, otm, slot, n, j, v)
        return True

    @cuda.jit
    def lstm_step(xproj, xtm, t, rec, bias, h, c, out, otm, slot, write, mask, has_mask, seen,
                  zero_out, a_act, r_act):
        i = cuda.grid(1)
        B = h.shape[0]
        H = h.shape[1]
        if i >= B * H:
            return
        n = i // H
        j = i - n * H
        if masked(h, out, otm, slot, write, mask, has_mask, t, n, j, seen, zero_out):
            return
        zi = xval(xproj, xtm, t, n, j) + rec[n, j] + bias[j]
        zf = xval(xproj, xtm, t, n, H + j) + rec[n, H + j] + bias[H + j]
        zc = xval(xproj, xtm, t, n, 2 * H + j) + rec[n, 2 * H + j] + bias[2 * H + j]
        zo = xval(xproj, xtm, t, n, 3 * H + j) + rec[n, 3 * H + j] + bias[3 * H + j]
        cn = act(r_act, zf) * c[n, j] + act(r_act, zi) * act(a_act, zc)
        hn = act(r_act, zo) * act(a_act, cn)
        c[n, j] = cn
        h[n, j] = hn
        if write:
            store(out, otm, slot, n, j, hn)

    @cuda.jit
    def gru_step(xproj, xtm, t, rec, bias_x, bias_r, h, out, otm, slot, write, mask, has_mask,
                 seen, zero_out, a_act, r_act):
        """reset_after=True: rec = h @ U (3H); hh = act(x_h + r * (rec_h + b_rh))."""
        i = cuda.grid(1)
        B = h.shape[0]
        H = h.shape[1]
        if i >= B * H:
            return
        n = i // H
        j = i - n * H
        if masked(h, out, otm, slot, write, mask, has_mask, t, n, j, seen, zero_out):
            return
        z = act(r_act, xval(xproj, xtm, t, n, j) + bias_x[j] + rec[n, j] + bias_r[j])
        r = act(r_act, xval(xproj, xtm, t, n, H + j) + bias_x[H + j] + rec[n, H + j] + bias_r[H + j])
        hh = act(a_act, xval(xproj, xtm, t, n, 2 * H + j) + bias_x[2 * H + j]
                 + r * (rec[n, 2 * H + j] + bias_r[2 * H + j]))
        hold = h[n, j]
        hn = z * hold + (one - z) * hh
        h[n, j] = hn
        if write:
            store(out, otm, slot, n, j, hn)

    @cuda.jit
    def gru_gates(xproj, xtm, t, rec, bias_x, h, zbuf, rh, r_act):
        """reset_after=False, first half: rec = h @ U[:, :2H]; z -> zbuf, r * h -> rh."""
        i = cuda.grid(1)
        B = h.shape[0]
        H = h.shape[1]
        if i >= B * H:
            return
        n = i // H
        j = i - n * H
        zbuf[n, j] = act(r_act, xval(xproj, xtm, t, n, j) + bias_x[j] + rec[n, j])
        r = act(r_act, xval(xproj, xtm, t, n, H + j) + bias_x[H + j] + rec[n, H + j])
        rh[n, j] = r * h[n, j]

    @cuda.jit
    def gru_finish(xproj, xtm, t, rec2, bias_x, zbuf, h, out, otm, slot, write, mask, has_mask,
                   seen, zero_out, a_act):
        """reset_after=False, second half: rec2 = (r * h) @ U[:, 2H:]."""
        i = cuda.grid(1)
        B = h.shape[0]
        H = h.shape[1]
        if i >= B * H:
            return
        n = i // H
        j = i - n * H
        if masked(h, out, otm, slot, write, mask, has_mask, t, n, j, seen, zero_out):
            return
        hh = act(a_act, xval(xproj, xtm, t, n, 2 * H + j) + bias_x[2 * H + j] + rec2[n, j])
        z = zbuf[n, j]
        hn = z * h[n, j] + (one - z) * hh
        h[n, j] = hn
        if write:
            store(out, otm, slot, n, j, hn)

    @cuda.jit
    def simple_step(xproj, xtm, t, rec, bias, h, out, otm, slot, write, mask, has_mask, seen,
                    zero_out, a_act):
        i = cuda.grid(1)
        B = h.shape[0]
        H = h.shape[1]
        if i >= B * H:
            return
        n = i // H
        j = i - n * H
        if masked(h, out, otm, slot, write, mask, has_mask, t, n, j, seen, zero_out):
            return
        hn = act(a_act, xval(xproj, xtm, t, n, j) + bias[j] + rec[n, j])
        h[n, j] = hn
        if write:
            store(out, otm, slot, n, j, hn)

    return {
        "lstm": lstm_step,
        "gru": gru_step,
        "gru_gates": gru_gates,
        "gru_finish": gru_finish,
        "simple_rnn": simple_step,
    }


def step_kernels(dtype):
    """``{name: kernel}`` for ``dtype``: lstm, gru, gru_gates, gru_finish, simple_rnn."""
    dtype = np.dtype(dtype)
    return _runtime.cached(("step", dtype.str), lambda: _build(dtype))


THREADS = 128  # threads per block of the per-step kernels (one thread per (sample, unit))


def blocks_for(count: int) -> int:
    return (count + THREADS - 1) // THREADS
