"""One unit of one sample at one step, on the GPU: what the per-step and persistent kernels share.

Both kernels have, for unit ``j`` of sample ``n`` at input time ``t``, the recurrent sums
``rec_g = (h @ U)[n, g * H + j]`` of the cell's gates (the per-step kernel reads them off a cuBLAS
GEMM's output, the persistent kernel reduces them on chip). ``unit_update(kind)`` adds the input
projection and the biases to them and applies the cell's update from ``kernels/cells``; masking is
``kernels/cells/masking``'s rule (``held_output``). The order of each sum is the kind's own (it
fixes the rounding, which the golden outputs of tests/fixtures/kernel_paths record).
"""

from __future__ import annotations

from numba import cuda

from ..cells import GRU, GRU_BEFORE, LSTM, gru, lstm, masking, simple_rnn
from . import activations  # noqa: F401  (registers the activation table for the CUDA target)


@cuda.jit(device=True)
def projection(xproj, time_major, t, n, k):
    """Column ``k`` of the input projection of sample ``n`` at time ``t``."""
    if time_major:
        return xproj[t, n, k]
    return xproj[n, t, k]


@cuda.jit(device=True)
def store(out, time_major, slot, n, j, value):
    """Write unit ``j`` of sample ``n`` into the output buffer at ``slot``."""
    if time_major:
        out[slot, n, j] = value
    else:
        out[n, slot, j] = value


@cuda.jit(device=True)
def held_output(hold, seen, zero_out):
    """The output of a unit at a masked step, its state ``hold`` being held (kernels/cells)."""
    return masking.masked_output(masking.cell_previous_output(hold, seen), zero_out)


@cuda.jit(device=True)
def reset_gates(xproj, time_major, t, n, j, H, bias_x, rec_z, rec_r, hold, ract):
    """GRU with reset_after=False, first half: (z, r * h) of one unit."""
    return gru.gates_reset_before(
        projection(xproj, time_major, t, n, j) + bias_x[j] + rec_z,
        projection(xproj, time_major, t, n, H + j) + bias_x[H + j] + rec_r, hold, ract)


def unit_update(kind: int):
    """The device function ``(h', c')`` of one unit for cell kind ``kind`` (a compile-time constant):

        update(xproj, time_major, t, n, j, H, bias_x, bias_r, rec, hold, c_old, z, act, ract)

    ``rec``: the recurrent sums of the unit's gates, a 4-tuple (unused ones zero; for GRU_BEFORE
    ``rec[2]`` is ``(r * h) @ U_h``); ``hold``: the unit's h; ``c_old``: its c (LSTM); ``z``: the
    update gate of the first half (GRU_BEFORE). Cells without c return ``c_old`` as c'.
    """

    @cuda.jit(device=True)
    def update(xproj, time_major, t, n, j, H, bias_x, bias_r, rec, hold, c_old, z, act, ract):
        if kind == LSTM:
            return lstm.update(
                projection(xproj, time_major, t, n, j) + rec[0] + bias_x[j],
                projection(xproj, time_major, t, n, H + j) + rec[1] + bias_x[H + j],
                projection(xproj, time_major, t, n, 2 * H + j) + rec[2] + bias_x[2 * H + j],
                projection(xproj, time_major, t, n, 3 * H + j) + rec[3] + bias_x[3 * H + j],
                c_old, act, ract)
        if kind == GRU:
            h_new = gru.update(
                projection(xproj, time_major, t, n, j) + bias_x[j] + rec[0] + bias_r[j],
                projection(xproj, time_major, t, n, H + j) + bias_x[H + j] + rec[1] + bias_r[H + j],
                projection(xproj, time_major, t, n, 2 * H + j) + bias_x[2 * H + j],
                rec[2] + bias_r[2 * H + j], hold, act, ract)
            return h_new, c_old
        if kind == GRU_BEFORE:
            candidate = projection(xproj, time_major, t, n, 2 * H + j) + bias_x[2 * H + j] + rec[2]
            return gru.update_reset_before(z, hold, candidate, act), c_old
        return simple_rnn.update(projection(xproj, time_major, t, n, j) + bias_x[j] + rec[0],
                                 act), c_old

    return update
