"""The cells, declared once for every kernel: layouts, activations, pointwise updates, masking.

- ``layout``: the cell kinds (``LSTM``, ``GRU``, ``GRU_BEFORE``, ``SIMPLE_RNN``) and ``Layout``;
- ``lstm``, ``gru``, ``simple_rnn``: one module per cell: its layout and its update for one unit
  of one sample, as scalar functions;
- ``activations``: the one table of activations (``NAMES``, ``activate``);
- ``masking``: the masking rule for one value.

The functions are plain Python until a kernel target calls ``register()`` (see ``_jit``); then
``numba.njit`` and ``numba.cuda.jit`` code can call them. Importing this package imports nothing
beyond the standard library.
"""

from __future__ import annotations

from . import activations, gru, lstm, masking, simple_rnn
from ._jit import register
from .layout import GRU, GRU_BEFORE, LSTM, SIMPLE_RNN, Layout

LAYOUTS = (lstm.LAYOUT, gru.LAYOUT, gru.LAYOUT_RESET_BEFORE, simple_rnn.LAYOUT)  # by kind
assert [layout.kind for layout in LAYOUTS] == list(range(len(LAYOUTS)))

__all__ = ["GRU", "GRU_BEFORE", "LAYOUTS", "LSTM", "Layout", "SIMPLE_RNN", "activations", "gru",
           "lstm", "masking", "register", "simple_rnn"]
