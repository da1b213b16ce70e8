"""The GRU's update along one row (all units of one sample) on the CPU, both reset_after modes.

The maths is ``kernels/cells/gru.py``'s, applied per unit (reset_after=True: over a range of
units, for calls that split the units over threads). reset_after=True: with the default
activations (tanh, sigmoid) in two passes (the candidate's pre-activation, then h') whose loops
vectorise through the inlined activations; with any others, one vectorised pass per activation
(``act_inplace``) between the cell's pieces.
reset_after=False runs in two halves around the candidate's product (``reset_row``, then
``update_reset_before_row``).
"""

from ..cells import gru as cell
from ..cells.activations import SIGMOID, TANH
from ._numba_cache import cached_njit
from ._rows import copy_row
from .activations import act_inplace


@cached_njit(error_model="numpy", inline="always")
def _blend_row(z, candidate, h_old, h, out):
    # The loop writes only out, then out is copied to h: a loop that reads four arrays and
    # writes two needs more runtime alias checks than LLVM allows, and would not vectorise.
    for j in range(h.shape[0]):
        out[j] = cell.blend(z[j], h_old[j], candidate[j])
    copy_row(h, out)


@cached_njit(error_model="numpy", inline="always")
def update_row(x, rec, h_old, h, out, H, u0, u1, act, ract):
    """reset_after=True, units [u0, u1) of one row. x: the row's input bias + x @ kernel (3H,
    used as scratch); rec: its recurrent bias + h @ recurrent_kernel (3H); h_old: its state;
    h: its new state (written); out: its output row."""
    n = u1 - u0
    xz = x[u0:u1]   # slices indexed from 0: the loops vectorise (kernels/cpu/_rows.py)
    xr = x[H + u0:H + u1]
    xh = x[2 * H + u0:2 * H + u1]
    hz = rec[u0:u1]
    hr = rec[H + u0:H + u1]
    hh = rec[2 * H + u0:2 * H + u1]
    o = out[u0:u1]
    if act == TANH and ract == SIGMOID:
        # cell.update in two passes (the candidate's pre-activation into xh, then h'): each
        # pass's chain is one activation deep, so the core overlaps more units (see lstm.py).
        for j in range(n):
            xh[j] = cell.reset_candidate_input(xr[j] + hr[j], xh[j], hh[j], SIGMOID)
        hs = h[u0:u1]
        if h_old.ctypes.data == h.ctypes.data:
            # One thread updates h in place: reading and writing one array, the loop
            # vectorises (LLVM's alias checks fail with h_old and h as two arrays).
            for j in range(n):
                v = cell.blend_candidate(xz[j] + hz[j], hs[j], xh[j], TANH, SIGMOID)
                hs[j] = v
                o[j] = v
            return
        ho = h_old[u0:u1]   # writes out only, then h (see _blend_row)
        for j in range(n):
            o[j] = cell.blend_candidate(xz[j] + hz[j], ho[j], xh[j], TANH, SIGMOID)
        copy_row(hs, o)
        return
    for j in range(n):
        xz[j] += hz[j]
        xr[j] += hr[j]
    act_inplace(ract, xz)                    # z
    act_inplace(ract, xr)                    # r
    for j in range(n):
        xh[j] = cell.candidate_input(xh[j], xr[j], hh[j])
    act_inplace(act, xh)                     # the candidate
    _blend_row(xz, xh, h_old[u0:u1], h[u0:u1], o)


@cached_njit(error_model="numpy", inline="always")
def reset_row(z, h_old, rh, ract):
    """reset_after=False, first half (whole rows): z's z and r pre-activations activated in
    place; rh = r * h, the input of the candidate's product."""
    H = h_old.shape[0]
    act_inplace(ract, z[0:2 * H])
    for j in range(H):
        rh[j] = cell.reset(z[H + j], h_old[j])


@cached_njit(error_model="numpy", inline="always")
def update_reset_before_row(z, candidate, h_old, h, out, act):
    """reset_after=False, second half: z from ``reset_row``; candidate: x_h + (r * h) @ U_h
    (activated in place); h_old: the state; h: the new state (written); out: the output row."""
    hh = candidate[0:h.shape[0]]
    act_inplace(act, hh)
    _blend_row(z, hh, h_old, h, out)
