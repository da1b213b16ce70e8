"""The ``cpu`` backend: NumPy arrays; fused Numba kernels for the Keras cells and Numba steps.

For each validated call it plans one of three paths (``plan``, logged on the ``gpukb`` logger at
DEBUG; see ``gpukb._plan``), then runs it (``run_plan``):

- ``fused_cell``: a ``gpukb.cells`` cell whose arrays fit (see ``gpukb._fused``) runs on the fused
  kernels of ``gpukb.kernels.cpu``: one GEMM for the input projection, then one compiled loop
  over time;
- ``jit_loop``: a step function compiled by Numba (``numba.njit`` or ``gpukb.jit_step``) gets the
  whole time loop compiled around it (``gpukb.backends._jit_loop``);
- ``generic``: every other call runs the shared generic loop on NumPy; the plan says why.

Option (attribute of ``gpukb.get_backend("cpu")``, or environment variable read when gpukb first
looks for backends): ``scratch_bytes`` / ``GPUKB_CPU_SCRATCH_MB``, the most memory the fused
backward keeps between calls for its large work arrays (``gpukb.kernels.cpu._scratch``; default
256 MiB, 0 turns the reuse off); ``clear_session`` lets it go.
"""

from __future__ import annotations

import importlib.util
import numbers
import os
import sys

import numpy

from .. import _repeat_calls
from .._backend import Backend, available, unavailable
from .._fused import cell_problem, loop_options
from .._plan import FUSED_CELL, GENERIC, JIT_LOOP, Plan, log_plan
from ..cells import Cell
from .._warn import warn_user
from . import _jit_loop

DEFAULT_SCRATCH_BYTES = 256 << 20   # as gpukb.kernels.cpu._scratch.DEFAULT_LIMIT_BYTES
_SCRATCH_MODULE = "gpukb.kernels.cpu._scratch"


def checked_scratch_bytes(value) -> int:
    if isinstance(value, (bool, numpy.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"cpu backend: scratch_bytes must be an int (bytes), "
                        f"got {type(value).__name__} {value!r}.")
    if value < 0:
        raise ValueError(f"cpu backend: scratch_bytes must be 0 or more, got {value}.")
    return int(value)


def _scratch_from_environment() -> int:
    raw = os.environ.get("GPUKB_CPU_SCRATCH_MB", "").strip()
    if not raw:
        return DEFAULT_SCRATCH_BYTES
    try:
        megabytes = int(raw)
        if megabytes < 0:
            raise ValueError
    except ValueError:
        warn_user(f"gpukb: environment variable GPUKB_CPU_SCRATCH_MB ignored: expected a whole "
                  f"number of MiB, 0 or more, got {raw!r}; using {DEFAULT_SCRATCH_BYTES >> 20}.")
        return DEFAULT_SCRATCH_BYTES
    return megabytes << 20


class CPUBackend(Backend):
    name = "cpu"
    array_types = ("numpy:ndarray",)
    priority = 0
    install_hint = "Reinstall gpukb (pip install gpukb) to get its Numba dependency."

    def __init__(self) -> None:
        super().__init__()
        self._scratch_applied: int | None = None
        self.scratch_bytes = _scratch_from_environment()

    @property
    def scratch_bytes(self) -> int:
        """Most bytes the fused backward keeps between calls for its work arrays (0: none)."""
        return self._scratch_bytes

    @scratch_bytes.setter
    def scratch_bytes(self, value) -> None:
        self._scratch_bytes = checked_scratch_bytes(value)
        if _SCRATCH_MODULE in sys.modules:   # else applied on the first fused vjp
            self._apply_scratch_limit()

    def _apply_scratch_limit(self) -> None:
        if self._scratch_applied != self._scratch_bytes:
            from gpukb.kernels.cpu import _scratch

            _scratch.set_limit(self._scratch_bytes)
            self._scratch_applied = self._scratch_bytes

    def on_clear_session(self) -> bool:
        """Let the fused backward's kept work arrays go; False when there were none."""
        scratch = sys.modules.get(_SCRATCH_MODULE)
        if scratch is None or scratch.held_bytes() == 0:
            return False
        scratch.clear()
        return True

    def is_available(self):
        if importlib.util.find_spec("numba") is None:
            return unavailable("Numba is not installed")
        return available()

    def _load_xp(self):
        return numpy

    def rnn(self, step_function, inputs, initial_states, **options):
        """``Backend.rnn``; a cell called again with arguments of the same structure reuses the
        checks and plan of the first such call (``gpukb._repeat_calls``: this backend plans from
        the arguments' structure alone)."""
        call_key = _repeat_calls.key(step_function, inputs, initial_states, options)
        if call_key is None:
            return super().rnn(step_function, inputs, initial_states, **options)
        mask = options.get("mask")
        shortest = _repeat_calls.runner(step_function, call_key)
        if shortest is not None:
            plan, template, run = shortest
            log_plan(plan, template)
            return run(inputs, initial_states, mask)
        known = _repeat_calls.lookup(step_function, call_key, inputs, initial_states, mask)
        if known is None:
            plan, call = self.planned_call(step_function, inputs, initial_states, **options)
            _repeat_calls.store(step_function, call_key, plan, call,
                                _frozen_cell_runner(plan, call, mask is not None))
        else:
            plan, call = known
        log_plan(plan, call)
        return self.run_plan(plan, call)

    def _cell_plan(self, call, fused_does):
        """The plan for a cell: fused (the fused kernels do ``fused_does``) or why not."""
        problem = cell_problem(call)
        if problem is None:
            cell = call.step_function
            return Plan(self.name, FUSED_CELL,
                        f"{cell.kernel_layout.name} cell in {numpy.dtype(cell.dtype)}: "
                        f"{fused_does}")
        return Plan(self.name, GENERIC, f"not fused: {problem}")

    def plan(self, call):
        if isinstance(call.step_function, Cell):
            return self._cell_plan(call, "the fused kernel runs the whole sequence")
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

    def plan_vjp(self, call):
        if isinstance(call.step_function, Cell):
            return self._cell_plan(call, "the fused kernel runs the forward, the fused backward "
                                         "kernel the pullback")
        return self.generic_vjp_plan(call)

    def run_vjp_plan(self, plan, call, given):
        if plan.path == FUSED_CELL:   # planned already: not through fused_rnn_vjp, which plans
            from .._vjp.fused_cpu import fused_cell_vjp
            from .._vjp.pullback import Pullback

            self._apply_scratch_limit()
            result, backward = fused_cell_vjp(call)
            return result, Pullback(call, result, backward, given)
        return super().run_vjp_plan(plan, call, given)

    def run_vjp_plan_recomputing(self, plan, call, given):
        """A fused cell keeps only every step's output (``fused_cpu``, ``recompute``); the
        pullback runs the fused forward again for the pre-activations and cell states."""
        if plan.path == FUSED_CELL:
            from .._vjp.fused_cpu import fused_cell_vjp
            from .._vjp.pullback import Pullback

            self._apply_scratch_limit()
            result, backward = fused_cell_vjp(call, recompute=True)
            return result, Pullback(call, result, backward, given)
        return super().run_vjp_plan_recomputing(plan, call, given)

    def vjp_residuals(self, plan, call):
        if plan.path != FUSED_CELL:
            return None
        from .._vjp import fused_cpu

        return fused_cpu.residual_specs(call), lambda r: fused_cpu.from_residuals(call, r)

    def fused_rnn_vjp(self, call):
        """The documented hook: the fused cell vjp, or NotImplemented when the vjp plan is the
        generic path."""
        from .._vjp.fused_cpu import fused_cell_vjp

        if self.plan_vjp(call).path != FUSED_CELL:
            return NotImplemented
        self._apply_scratch_limit()
        return fused_cell_vjp(call)

    def fused_rnn(self, call):
        """The documented hook, for callers that use it: the planned fused path, or
        NotImplemented when the plan is the generic loop."""
        plan = self.plan(call)
        return NotImplemented if plan.path == GENERIC else self.run_plan(plan, call)


def _frozen_cell_runner(plan, call, masked):
    """For a frozen cell's fused call (its weights never change): ``run(inputs, initial_states,
    mask)`` giving ``_run_fused_cell``'s result for a later call of the same structure (the
    same key in ``gpukb._repeat_calls``) from the kernels' plan made once here, with no
    ``RnnCall`` made and no plan looked up (``kernels.cpu.planned_cell``): 17 -> 13 us a call
    of LSTM (1, 10, 16, 32), 22 -> 16 us with a mask (EPYC, 2026-12-05). None for anything
    else. ``masked``: the call has a mask (each later call of the key has one too, read and
    checked as ``_rnn`` reads it)."""
    cell = call.step_function
    cache = getattr(cell, "_kernel_cache", None)
    if plan.path != FUSED_CELL or cache is None:
        return None
    from gpukb.kernels import cpu as kernels

    from .._rnn.validation import _mask_to_steps

    run_kernel = kernels.planned_cell(
        cell.kernel_layout.kind, call.input_leaves[0], cell.kernel, cell.recurrent_kernel,
        cell.bias, masked, loop_options(call), cell.activation,
        getattr(cell, "recurrent_activation", "linear"), cache)
    batch, steps, time_major = call.batch_size, call.time_steps, call.time_major
    container = type(call.initial_states)   # a list or a tuple of arrays (the key's rule)

    def run(inputs, initial_states, mask):
        step_mask = None if mask is None else _mask_to_steps(mask, numpy, batch, steps,
                                                             time_major)
        last, outputs, states = run_kernel(inputs, initial_states, step_mask)
        return last, outputs, container(states)

    return run


def _run_fused_cell(call):
    from gpukb.kernels import cpu as kernels  # compiles lazily, on the first fused call

    cell = call.step_function
    last, outputs, states = kernels.run_cell(
        cell.kernel_layout.kind, call.input_leaves[0], cell.kernel, cell.recurrent_kernel,
        cell.bias, call.state_leaves, call.step_mask, loop_options(call), cell.activation,
        getattr(cell, "recurrent_activation", "linear"),
        weight_cache=getattr(cell, "_kernel_cache", None))   # a frozen cell's (Cell.freeze)
    return last, outputs, call.pack_states(list(states))
