"""The SimpleRNN's update along one row (all units of one sample) on the CPU.

``kernels/cells/simple_rnn.py``: h' = act(z), which along a row is ``act_into``.
"""

from ._numba_cache import cached_njit
from .activations import act_into


@cached_njit(error_model="numpy", inline="always")
def update_row(z, h, out, u0, u1, act):
    """Units [u0, u1) of one row. z: the row's pre-activations; h: its new h (written); out:
    its output row."""
    hr = h[u0:u1]
    act_into(act, hr, z[u0:u1])
    orow = out[u0:u1]
    for j in range(u1 - u0):
        orow[j] = hr[j]
