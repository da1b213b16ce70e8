"""The LSTM's update along one row (all units of one sample) on the CPU.

The maths is ``kernels/cells/lstm.py``'s, applied per unit: with the default activations (tanh,
sigmoid) in one pass whose loop vectorises through the inlined activations; with any others, one
vectorised pass per activation (``act_inplace``), then the cell's ``cell_state`` and ``hidden``.
"""

from ..cells import lstm as cell
from ..cells.activations import SIGMOID, TANH
from ._numba_cache import cached_njit
from .activations import act_inplace, act_into


@cached_njit(error_model="numpy", inline="always")
def update_row(z, c, h, out, act, ract):
    """z: the row's 4H pre-activations (used as scratch); c, h: its states, updated; out: its
    output row."""
    H = h.shape[0]
    zi = z[0:H]
    zf = z[H:2 * H]
    zg = z[2 * H:3 * H]
    zo = z[3 * H:4 * H]
    if act == TANH and ract == SIGMOID:
        for j in range(H):
            v, new_c = cell.update(zi[j], zf[j], zg[j], zo[j], c[j], TANH, SIGMOID)
            c[j] = new_c
            h[j] = v
            out[j] = v
        return
    act_inplace(ract, z[0:2 * H])   # i, f
    act_inplace(act, zg)
    act_inplace(ract, zo)
    for j in range(H):
        c[j] = cell.cell_state(zf[j], c[j], zi[j], zg[j])
    act_into(act, zg, c)            # zg <- act(c')
    for j in range(H):
        v = cell.hidden(zo[j], zg[j])
        h[j] = v
        out[j] = v
