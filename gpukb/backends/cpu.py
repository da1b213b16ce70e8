"""The ``cpu`` backend: NumPy arrays; fused Numba kernels for the Keras cells and Numba steps.

For each validated call it plans one of three paths (``plan``, logged on the ``gpukb`` logger at
DEBUG; see ``gpukb._plan``), then runs it (``run_plan``):

- ``fused_cell``: a ``gpukb.cells`` cell whose arrays fit (see ``gpukb._fused``) runs on the fused
  kernels of ``gpukb.kernels.cpu``: one GEMM for the input projection, then one compiled loop
  over time;
- ``jit_loop``: a step function compiled by Numba (``numba.njit`` or ``gpukb.jit_step``) gets the
  whole time loop compiled around it (``gpukb.backends._jit_loop``);
- ``generic``: every other call runs the shared generic loop on NumPy; the plan says why.
"""

from __future__ import annotations

import importlib.util

import numpy

from .._backend import Backend, available, unavailable
from .._fused import cell_problem, loop_options
from .._plan import FUSED_CELL, GENERIC, JIT_LOOP, Plan, log_plan
from ..cells import Cell
from . import _jit_loop


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

    def plan(self, call):
        if isinstance(call.step_function, Cell):
            problem = cell_problem(call)
            if problem is None:
                cell = call.step_function
                return Plan(self.name, FUSED_CELL,
                            f"{cell.kernel_layout.name} cell in {numpy.dtype(cell.dtype)}: the "
                            "fused kernel runs the whole sequence")
            return Plan(self.name, GENERIC, f"not fused: {problem}")
        problem = _jit_loop.problem(call)
        if problem is None:
            return Plan(self.name, JIT_LOOP, "a step compiled by Numba: the whole time loop runs "
                                             "compiled around it")
        return Plan(self.name, GENERIC, f"not fused: {problem}")

    def run_plan(self, plan, call):
        from .._rnn import run_generic

        if plan.path == FUSED_CELL:
            return _run_fused_cell(call)
        if plan.path == JIT_LOOP:
            result = _jit_loop.run(call)
            if result is not NotImplemented:
                return result
            log_plan(Plan(self.name, GENERIC, "the jit loop did not compile for these types",
                          JIT_LOOP), call)
        return run_generic(call)

    def fused_rnn(self, call):
        """The documented hook, for callers that use it: the planned fused path, or
        NotImplemented when the plan is the generic loop."""
        plan = self.plan(call)
        return NotImplemented if plan.path == GENERIC else self.run_plan(plan, call)


def _run_fused_cell(call):
    from gpukb.kernels import cpu as kernels  # compiles lazily, on the first fused call

    cell = call.step_function
    last, outputs, states = kernels.run_cell(
        cell.kernel_layout.kind, call.input_leaves[0], cell.kernel, cell.recurrent_kernel,
        cell.bias, call.state_leaves, call.step_mask, loop_options(call), cell.activation,
        getattr(cell, "recurrent_activation", "linear"))
    return last, outputs, call.pack_states(list(states))
