"""The LSTM's update along one row (all units of one sample) on the CPU.

The maths is ``kernels/cells/lstm.py``'s, applied per unit: with the default activations (tanh,
sigmoid) in two passes (``next_cell_state``, then ``next_hidden``) whose loops vectorise through
the inlined activations; with any others, one vectorised pass per activation (``act_inplace``),
then the cell's ``cell_state`` and ``hidden``.
"""

from ..cells import lstm as cell
from ..cells.activations import SIGMOID, TANH
from ._numba_cache import cached_njit
from .activations import act_inplace, act_into


@cached_njit(error_model="numpy", inline="always")
def update_row(z, c, h, out, H, u0, u1, act, ract):
    """Units [u0, u1) of one row. z: the row's 4H pre-activations (used as scratch); c: its cell
    state, updated; h: its new h (written); out: its output row."""
    zi = z[u0:u1]
    zf = z[H + u0:H + u1]
    zg = z[2 * H + u0:2 * H + u1]
    zo = z[3 * H + u0:3 * H + u1]
    cr = c[u0:u1]
    hr = h[u0:u1]
    orow = out[u0:u1]
    n = u1 - u0
    if act == TANH and ract == SIGMOID:
        # cell.update in two passes: one unit's update is a chain of two activations (c' needs
        # i, f and g; h' needs act(c')), too long for the core to overlap many units of one
        # loop; each pass's chain is one activation deep (about 20% faster, same arithmetic).
        for j in range(n):
            cr[j] = cell.next_cell_state(zi[j], zf[j], zg[j], cr[j], TANH, SIGMOID)
        for j in range(n):
            v = cell.next_hidden(zo[j], cr[j], TANH, SIGMOID)
            hr[j] = v
            orow[j] = v
        return
    act_inplace(ract, zi)
    act_inplace(ract, zf)
    act_inplace(act, zg)
    act_inplace(ract, zo)
    for j in range(n):
        cr[j] = cell.cell_state(zf[j], cr[j], zi[j], zg[j])
    act_into(act, zg, cr)            # zg <- act(c')
    for j in range(n):
        v = cell.hidden(zo[j], zg[j])
        hr[j] = v
        orow[j] = v
