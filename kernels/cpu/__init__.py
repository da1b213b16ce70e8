"""Fused Numba CPU kernels for Keras LSTM, GRU and SimpleRNN forward passes.

    last_output, outputs, (h, c) = lstm(x, kernel, recurrent_kernel, bias, h0, c0, step_mask, *,
        go_backwards, zero_output_for_mask, return_all_outputs, time_major, activation,
        recurrent_activation)
    last_output, outputs, (h,) = gru(x, kernel, recurrent_kernel, bias, h0, step_mask, *,
        reset_after, go_backwards, zero_output_for_mask, return_all_outputs, time_major,
        activation, recurrent_activation)
    last_output, outputs, (h,) = simple_rnn(x, kernel, recurrent_kernel, bias, h0, step_mask, *,
        go_backwards, zero_output_for_mask, return_all_outputs, time_major, activation)

Importing compiles nothing: every kernel compiles lazily on its first call (and is cached on
disk by Numba when it can: see ``_numba_cache``). Each call runs its time loop as compiled blocks
of steps, returning to Python in between, so Ctrl-C interrupts it (see ``_common.run_chunks``).
"""

from .activations import SUPPORTED_ACTIVATIONS
from .gru import gru
from .lstm import lstm
from .simple_rnn import simple_rnn

__all__ = ["SUPPORTED_ACTIVATIONS", "gru", "lstm", "simple_rnn"]
