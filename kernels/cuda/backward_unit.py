"""One unit of one sample at one reverse step: what the per-step and persistent backward kernels
share (as ``unit`` is for the forward kernels).

Both kernels have, for unit ``j`` of sample ``n`` at processing step ``i``, the cotangent ``gh`` of
the h that step ``i`` produced (``direct + through``: the part outside the recurrent product and
the product's, ``dz[i + 1] @ U.T``). ``unit_step(kind)`` applies the backward masking rule and the
cells' scalar ``backward`` functions (``kernels/cells``: the derivatives are written there once)
and writes the pre-activations' cotangents ``dz[i]`` of the unit; the per-step kernel keeps the
unit's running cotangents (``direct``, ``carry``, the LSTM's ``gc``) in global arrays, the
persistent kernel in registers. ``reset_step`` is GRU without ``reset_after``'s second half.
"""

from __future__ import annotations

from numba import cuda

from ..cells import GRU, GRU_BEFORE, LAYOUTS, LSTM, gru, lstm, simple_rnn
from ..cells._jit import constant
from ..cells.activations import activate
from . import activations as _cuda_activations  # noqa: F401  (the table's tanh/sigmoid on CUDA)


def unit_step(kind: int):
    """The device function of one unit's reverse step for cell kind ``kind`` (compile-time):

        step(i, n, j, H, valid, zero_out, a, h_prev, c, rec, gy, gh, carry, gc, dz, dz_rec,
             act, ract) -> (direct, carry, gc, cand)

    ``a``: activated gates ``(T, B, G)``; ``gy``: the output cotangents; ``carry``: output
    cotangent handed back by later masked steps; ``gc``: the LSTM's cell-state cotangent (else
    unused). A masked step (``valid`` False) passes ``gh`` through as ``direct``, moves the output
    cotangent into ``carry`` (dropped with ``zero_out``) and writes zeros; a valid step writes
    ``dz[i, n, g * H + j]`` (GRU: and ``dz_rec``, the recurrent part's; GRU without
    ``reset_after``: not the r column, see ``reset_step``) and returns the old h's cotangent
    outside the recurrent product as ``direct``; ``cand``: GRU without ``reset_after``, the
    candidate's dz (zero otherwise).
    """
    gates = LAYOUTS[kind].gates

    @cuda.jit(device=True)
    def step(i, n, j, H, valid, zero_out, a, h_prev, c, rec, gy, gh, carry, gc, dz, dz_rec,
             act, ract):
        zero = constant(gh, 0.0)
        if not valid:
            if not zero_out:
                carry += gy[i, n, j]
            for g in range(gates):
                dz[i, n, g * H + j] = zero
                if kind == GRU:
                    dz_rec[i, n, g * H + j] = zero
            return gh, carry, gc, zero
        dh = gy[i, n, j] + carry + gh
        if kind == LSTM:
            dzi, dzf, dzc, dzo, dc = lstm.backward(
                a[i, n, j], a[i, n, H + j], a[i, n, 2 * H + j], a[i, n, 3 * H + j], c[i, n, j],
                activate(act, c[i + 1, n, j]), dh, gc, act, ract)
            dz[i, n, j] = dzi
            dz[i, n, H + j] = dzf
            dz[i, n, 2 * H + j] = dzc
            dz[i, n, 3 * H + j] = dzo
            return zero, zero, dc, zero
        if kind == GRU or kind == GRU_BEFORE:
            dzz, dpre, dd = gru.blend_backward(a[i, n, j], h_prev[i, n, j], a[i, n, 2 * H + j],
                                               dh, act, ract)
            dz[i, n, j] = dzz
            dz[i, n, 2 * H + j] = dpre
            if kind == GRU:
                dzr, drec = gru.candidate_backward(dpre, a[i, n, H + j], rec[i, n, 2 * H + j],
                                                   ract)
                dz[i, n, H + j] = dzr
                dz_rec[i, n, j] = dzz
                dz_rec[i, n, H + j] = dzr
                dz_rec[i, n, 2 * H + j] = drec
                return dd, zero, gc, zero
            return dd, zero, gc, dpre
        dz[i, n, j] = simple_rnn.backward(a[i, n, j], dh, act)
        return zero, zero, gc, zero

    return step


@cuda.jit(device=True)
def reset_step(i, n, j, H, a, h_prev, d_rh, dz, direct, ract):
    """GRU without reset_after at a valid step, once d(r * h) = cand @ U_h.T is known: writes the
    r column's dz and returns ``direct`` plus the old h's share."""
    dzr, dh = gru.reset_backward(d_rh, a[i, n, H + j], h_prev[i, n, j], ract)
    dz[i, n, H + j] = dzr
    return direct + dh
