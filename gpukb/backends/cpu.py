"""The ``cpu`` backend: NumPy arrays; fused Numba kernels for the Keras cells.

A call whose step function is a ``gpukb.cells`` cell (and whose arrays fit, see ``gpukb._fused``)
runs on the fused kernels of ``gpukb.kernels.cpu``: one GEMM for the input projection, then one
compiled loop over time. A step function compiled by Numba (``numba.njit`` or ``gpukb.jit_step``)
gets the whole time loop compiled around it (``gpukb.kernels.cpu.jit_loop``). Every other call
runs the shared generic loop on NumPy.
"""

from __future__ import annotations

import importlib.util

import numpy

from .._backend import Backend, available, unavailable
from .._fused import cell_kernel_options, fused_cell
from .._jit_step import compile_error_recorder, fused_step


class CPUBackend(Backend):
    name = "cpu"
    array_types = ("numpy:ndarray",)
    priority = 0
    install_hint = "Reinstall gpukb (pip install gpukb) to get its Numba dependency."

    def is_available(self):
        if importlib.util.find_spec("numba") is None:
            return unavailable("Numba is not installed")
        return available()

    def _load_xp(self):
        return numpy

    def fused_rnn(self, call):
        step = fused_step(call)  # a Numba-compiled step: the whole time loop in one compiled function
        if step is not None:
            from gpukb.kernels.cpu import jit_loop

            # NotImplemented: the generic loop runs it
            return jit_loop.run(call, step, compile_error_recorder(call))
        cell = fused_cell(call)
        if cell is None:
            return NotImplemented
        from gpukb.kernels import cpu as kernels  # compiles lazily, on the first fused call

        x = call.input_leaves[0]
        options = cell_kernel_options(call)
        if cell.kind == "lstm":
            h0, c0 = call.state_leaves
            last, outputs, states = kernels.lstm(
                x, cell.kernel, cell.recurrent_kernel, cell.bias, h0, c0, call.step_mask,
                activation=cell.activation, recurrent_activation=cell.recurrent_activation,
                **options)
        elif cell.kind == "gru":
            last, outputs, states = kernels.gru(
                x, cell.kernel, cell.recurrent_kernel, cell.bias, call.state_leaves[0],
                call.step_mask, reset_after=cell.reset_after, activation=cell.activation,
                recurrent_activation=cell.recurrent_activation, **options)
        else:
            last, outputs, states = kernels.simple_rnn(
                x, cell.kernel, cell.recurrent_kernel, cell.bias, call.state_leaves[0],
                call.step_mask, activation=cell.activation, **options)
        return last, outputs, call.pack_states(list(states))
