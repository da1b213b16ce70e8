"""Start-up costs, each in a fresh interpreter (asv's ``timeraw_``)."""


def timeraw_import_gpukb():
    """``import gpukb``: must stay light (NumPy only; Numba and CuPy load on first need)."""
    return "import gpukb"


def timeraw_first_lstm_call():
    """Import plus the first CPU LSTM call on a tiny input: Numba compilation, or loading its
    on-disk cache (the first repeat may compile, later ones load the cache)."""
    return """
import numpy as np
import gpukb
B, T, D, H = 2, 3, 4, 5
rng = np.random.default_rng(0)
f32 = np.float32
cell = gpukb.cells.lstm(rng.standard_normal((D, 4 * H)).astype(f32),
                        rng.standard_normal((H, 4 * H)).astype(f32),
                        np.zeros(4 * H, f32))
gpukb.rnn(cell, rng.standard_normal((B, T, D)).astype(f32),
          [np.zeros((B, H), f32), np.zeros((B, H), f32)])
"""


timeraw_first_lstm_call.timeout = 300
timeraw_first_lstm_call.repeat = (1, 3, 60.0)
