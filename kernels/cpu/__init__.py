"""Fused Numba CPU kernels (installed as ``gpukb.kernels.cpu``).

    last_output, outputs, new_states = run_cell(kind, x, kernel, recurrent_kernel, bias, states,
                                                step_mask, options, activation, recurrent_activation)

runs a Keras cell (a ``kernels.cells`` kind: LSTM, GRU in both reset_after modes, SimpleRNN) over a
sequence (see ``cells``); ``jit_loop`` runs the whole time loop around a step function compiled
by Numba. Flags come as one ``kernels.options.LoopOptions``.

Importing compiles nothing: every kernel compiles lazily on its first call (and is cached on
disk by Numba when it can: see ``_numba_cache``). Each call runs its time loop as compiled blocks
of steps, returning to Python in between, so Ctrl-C interrupts it (see ``_common.run_chunks``).
"""

from .cells import planned_cell, run_cell

__all__ = ["planned_cell", "run_cell"]
