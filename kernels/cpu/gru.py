"""The GRU's update along one row (all units of one sample) on the CPU, both reset_after modes.

The maths is ``kernels/cells/gru.py``'s, applied per unit. reset_after=True: with the default
activations (tanh, sigmoid) in one pass whose loop vectorises through the inlined activations;
with any others, one vectorised pass per activation (``act_inplace``) between the cell's pieces.
reset_after=False runs in two halves around the candidate's product (``reset_row``, then
``update_reset_before_row``).
"""

from ..cells import gru as cell
from ..cells.activations import SIGMOID, TANH
from ._numba_cache import cached_njit
from .activations import act_inplace


@cached_njit(error_model="numpy", inline="always")
def _blend_row(z, candidate, h, out):
    for j in range(h.shape[0]):
        v = cell.blend(z[j], h[j], candidate[j])
        h[j] = v
        out[j] = v


@cached_njit(error_model="numpy", inline="always")
def update_row(x, rec, h, out, act, ract):
    """reset_after=True. x: the row's input bias + x @ kernel (3H, used as scratch); rec: its
    recurrent bias + h @ recurrent_kernel (3H); h: its state, updated; out: its output row."""
    H = h.shape[0]
    if act == TANH and ract == SIGMOID:
        for j in range(H):
            v = cell.update(x[j] + rec[j], x[H + j] + rec[H + j], x[2 * H + j], rec[2 * H + j],
                            h[j], TANH, SIGMOID)
            h[j] = v
            out[j] = v
        return
    gates = x[0:2 * H]
    for j in range(2 * H):
        gates[j] += rec[j]
    act_inplace(ract, gates)                 # z, r
    x_h = x[2 * H:3 * H]
    for j in range(H):
        x_h[j] = cell.candidate_input(x_h[j], x[H + j], rec[2 * H + j])
    act_inplace(act, x_h)                    # the candidate
    _blend_row(x[0:H], x_h, h, out)


@cached_njit(error_model="numpy", inline="always")
def reset_row(z, h, rh, ract):
    """reset_after=False, first half: z's z and r pre-activations activated in place;
    rh = r * h, the input of the candidate's product."""
    H = h.shape[0]
    act_inplace(ract, z[0:2 * H])
    for j in range(H):
        rh[j] = cell.reset(z[H + j], h[j])


@cached_njit(error_model="numpy", inline="always")
def update_reset_before_row(z, candidate, h, out, act):
    """reset_after=False, second half: z from ``reset_row``; candidate: x_h + (r * h) @ U_h
    (activated in place); h: the state, updated; out: the output row."""
    hh = candidate[0:h.shape[0]]
    act_inplace(act, hh)
    _blend_row(z, hh, h, out)
