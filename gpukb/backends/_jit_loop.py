"""The cpu backend's jit loop, backend side: which calls it takes, and the generic loop's errors.

A call whose step function is compiled by Numba (a ``numba.njit`` dispatcher or a
``gpukb.jit_step``) runs its whole time loop in one compiled function
(``gpukb.kernels.cpu.jit_loop``, the kernel half: arrays and flags in, arrays out). This module
reads the ``RnnCall``: ``problem(call)`` says why the loop cannot run it (None when it can), which
compiles the step for the call's types, so that a step whose result does not fit goes to the
generic loop before it runs even once; ``run(call)`` runs it, turning what the compiled loop
reports into exactly the generic loop's errors and notes.

Eligible: a Numba-compiled step; NumPy arrays only; one input array (a bare array, not a
pytree); ``initial_states`` a flat list/tuple of at most 8 arrays of rank >= 1; ``constants`` at
most 8 arrays; B >= 1; dtypes Numba handles (bool, integers, float32/64, complex); a step that
compiles for them and returns ``(array, tuple or list of the states)``, each state keeping its
dtype and rank. A ``jit_step`` that Numba cannot compile for these dtypes warns once and runs as
plain Python in the generic loop (``JitStep.record_compile_error``).
"""

from __future__ import annotations

import sys

import numpy as np

from .._fused import loop_options
from .._jit_step import JitStep, array_signature, numba_dispatcher
from .._warn import warn_user

MAX_STATES = 8      # the compiled loop is generated per number of states and constants;
MAX_CONSTANTS = 8   # beyond these the generic loop runs the call
NOT_NUMBA = ("the step function is neither a gpukb.cells cell nor compiled by Numba (numba.njit "
             "or gpukb.jit_step)")


def _plain(a) -> bool:
    """A NumPy array of a dtype Numba handles natively (bool, integers, float32/64, complex)."""
    return (isinstance(a, np.ndarray) and a.dtype.kind in "biufc" and a.dtype != np.float16
            and a.dtype.isnative)


def step_signature(call) -> tuple:
    """``array_signature`` of the arguments each step of ``call`` gets (a slice of its input,
    then its states and constants)."""
    x = call.input_leaves[0]
    step_input = f"{x.dtype}[{x.ndim - 1}d]"
    return (step_input,) + array_signature((list(call.state_leaves), list(call.constants)))


def _structure_problem(call) -> str | None:
    """Why the call's arrays do not fit the loop, or None."""
    if call.xp is not np:
        return "the arrays are not NumPy arrays"
    if len(call.input_leaves) != 1 or call.input_treespec.num_nodes != 1:
        return "the inputs are nested; the jit loop takes one array"
    if call.batch_size < 1 or not _plain(call.input_leaves[0]):
        return "the input is empty or of a dtype Numba does not handle natively"
    states = call.initial_states
    if not isinstance(states, (list, tuple)) or len(call.state_leaves) != len(states):
        return "initial_states is not a flat list or tuple of arrays"
    if len(states) > MAX_STATES or len(call.constants) > MAX_CONSTANTS:
        return f"more than {MAX_STATES} states or {MAX_CONSTANTS} constants"
    if not all(_plain(s) and s.ndim >= 1 for s in states) or not all(_plain(c) for c in call.constants):
        return "a state or constant is not a NumPy array of a dtype Numba handles natively"
    return None


def problem(call) -> str | None:
    """Why the jit loop cannot run ``call``, or None when it can (compiles the step first)."""
    step = call.step_function
    if not isinstance(step, JitStep) and "numba" not in sys.modules:  # no dispatcher can exist yet
        return NOT_NUMBA
    found = _structure_problem(call)
    if found is not None:
        return found
    if isinstance(step, JitStep) and step.falls_back(step_signature(call)):
        return "Numba could not compile this jit_step for these dtypes: it runs as Python"
    dispatcher = numba_dispatcher(step)  # may import Numba
    if dispatcher is None:
        return NOT_NUMBA
    from gpukb.kernels.cpu import jit_loop

    try:
        return_type = jit_loop.step_result_type(dispatcher, call.input_leaves[0],
                                                call.state_leaves, call.constants)
    except Exception as err:  # any compile failure (typing, lowering, SciPy missing for `@`)
        if isinstance(step, JitStep):  # warns once; its calls run as Python from now on
            step.record_compile_error(step_signature(call), err)
        return f"Numba could not compile the step for these arrays ({type(err).__name__})"
    return jit_loop.result_problem(return_type, call.state_leaves)


def run(call):
    """Run an eligible call (``problem(call)`` is None) in the compiled loop; NotImplemented if
    the loop itself does not compile for these types (warned once)."""
    from gpukb import _rnn
    from gpukb.kernels.cpu import jit_loop

    def on_step_error(err, i):
        _rnn.note_step_error(err, call, i, call.time_steps - 1 - i if call.go_backwards else i)

    def on_loop_error(err):
        name = getattr(call.step_function, "__name__", call.step_function)
        warn_user(f"gpukb.rnn: the fused time loop did not compile for step function {name!r} "
                  f"({type(err).__name__}: {str(err).splitlines()[0]}); running the generic "
                  "loop, with identical results.")

    try:
        result = jit_loop.run(numba_dispatcher(call.step_function), call.input_leaves[0],
                              call.state_leaves, call.constants, call.step_mask,
                              loop_options(call), on_step_error, on_loop_error)
    except jit_loop.LoopStopped as stopped:
        _raise_like_generic(call, stopped)
    if result is None:
        return NotImplemented
    outputs, states = result
    last = outputs[-1] if call.time_major else outputs[:, -1]
    return last, outputs, call.pack_states(states)


class _Fake:
    """Stands for an array of a given shape and dtype in the generic loop's checks."""

    def __init__(self, shape, dtype):
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.ndim = len(self.shape)


def _raise_like_generic(call, stopped):
    """Raise the generic loop's ValueError for what the compiled loop stopped at."""
    from numba.np.numpy_support import as_dtype

    from gpukb._rnn import check_new_states, check_step_output
    from gpukb.kernels.cpu import jit_loop

    return_type = jit_loop.step_result_type(numba_dispatcher(call.step_function),
                                            call.input_leaves[0], call.state_leaves, call.constants)
    out_dtype = as_dtype(return_type[0].dtype)
    container = list if stopped.states_are_list else tuple
    if stopped.problem == "batch":
        check_step_output(call, _Fake(stopped.first_output_shape, out_dtype), None)
    elif stopped.problem == "output_changed":
        first = check_step_output(call, _Fake(stopped.first_output_shape, out_dtype), None)
        check_step_output(call, _Fake(stopped.bad_shape, out_dtype), first)
    elif stopped.problem == "state_count":
        # Only the count matters: check_new_states raises on it before looking at any leaf.
        check_new_states(call, container([_Fake((), out_dtype)] * stopped.index), set())
    elif stopped.problem == "state_shape":
        fake = [_Fake(s.shape, s.dtype) for s in call.state_leaves]
        fake[stopped.index] = _Fake(stopped.bad_shape, call.state_leaves[stopped.index].dtype)
        check_new_states(call, container(fake), set())
    raise AssertionError(f"gpukb jit loop: unexpected stop {stopped}")  # pragma: no cover
