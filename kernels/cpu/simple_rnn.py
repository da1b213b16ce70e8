"""The SimpleRNN's update along one row (all units of one sample) on the CPU.

``kernels/cells/simple_rnn.py``: h' = act(z), which along a row is ``act_into``.
"""

from ._numba_cache import cached_njit
from .activations import act_into


@cached_njit(error_model="numpy", inline="always")
def update_row(z, h, out, act):
    """z: the row's pre-activations; h: its state, updated; out: its output row."""
    act_into(act, h, z[0:h.shape[0]])
    for j in range(h.shape[0]):
        out[j] = h[j]
