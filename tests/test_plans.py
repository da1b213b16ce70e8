"""Decide, then run: the plan each backend makes for a validated rnn call (gpukb._plan), which
path it names and why, and the DEBUG line on the ``gpukb`` logger that says so."""

import logging

import numba
import numpy as np
import pytest

import gpukb
from gpukb import _rnn
from gpukb._plan import FUSED_CELL, FUSED_RNN, GENERIC, JIT_LOOP, Plan, recorded_plans

B, T, D, H = 2, 3, 4, 5


def cpu_plan(step, x, states, **options):
    return gpukb.get_backend("cpu").plan(_rnn.prepare(step, x, states, backend="cpu", **options))


def lstm(dtype=np.float32, **kw):
    rng = np.random.default_rng(0)
    return gpukb.cells.lstm(*(rng.standard_normal(s).astype(dtype)
                              for s in [(D, 4 * H), (H, 4 * H), (4 * H,)]), **kw)


def zeros(*shape, dtype=np.float32):
    return np.zeros(shape, dtype)


@numba.njit
def numba_step(x, states):
    h = states[0] * 0.5 + x[:, :1]
    return h, (h,)


def python_step(x, states):
    return states[0], (states[0],)


# -- which path, and why --------------------------------------------------------------------


def test_a_plain_cell_call_plans_the_fused_cell_kernel():
    plan = cpu_plan(lstm(), zeros(B, T, D), [zeros(B, H), zeros(B, H)], go_backwards=True)
    assert plan == Plan("cpu", FUSED_CELL, plan.reason)
    assert "lstm cell in float32" in plan.reason


def test_gru_plans_name_their_reset_mode():
    rng = np.random.default_rng(1)
    W, U = rng.standard_normal((D, 3 * H)), rng.standard_normal((H, 3 * H))
    before = gpukb.cells.gru(W, U, rng.standard_normal(3 * H), reset_after=False)
    x, h = np.zeros((B, T, D)), [np.zeros((B, H))]
    assert "gru_before cell in float64" in cpu_plan(before, x, h).reason
    after = gpukb.cells.gru(W, U, rng.standard_normal((2, 3 * H)))
    assert "gru cell in float64" in cpu_plan(after, x, h).reason


@pytest.mark.parametrize("case, why", [
    ("float16", "computes in float16; the fused kernels take float32 or float64"),
    ("nested_inputs", "the inputs are nested"),
    ("rank4", "the input has rank 4"),
    ("state_shape", "a state is not a (batch, 5) float32 array"),
])
def test_a_cell_call_the_kernels_cannot_take_plans_the_generic_loop_and_says_why(case, why):
    cell = lstm(np.float16 if case == "float16" else np.float32)
    dtype = np.float16 if case == "float16" else np.float32
    x, states = zeros(B, T, D, dtype=dtype), [zeros(B, H, dtype=dtype), zeros(B, H, dtype=dtype)]
    if case == "nested_inputs":
        x = {"a": x}
    elif case == "rank4":
        x = x[..., None]
    elif case == "state_shape":
        states = [zeros(B, H, 1), zeros(B, H, 1)]
    plan = cpu_plan(cell, x, states)
    assert (plan.backend, plan.path) == ("cpu", GENERIC)
    assert plan.reason.startswith("not fused: ") and why in plan.reason


def test_a_numba_step_plans_the_jit_loop():
    plan = cpu_plan(numba_step, np.ones((B, T, D)), [np.zeros((B, 1))])
    assert plan.path == JIT_LOOP and "compiled by Numba" in plan.reason


def test_numba_steps_the_jit_loop_cannot_take_plan_the_generic_loop_and_say_why():
    nine = cpu_plan(numba.njit(lambda x, s: (s[0], s)), np.ones((B, T, D)), [np.zeros((B, 1))] * 9)
    assert nine.path == GENERIC and "more than 8 states" in nine.reason

    @numba.njit
    def bare_state(x, states):
        return states[0], states[0]   # new states as a bare array, not a tuple or list

    bare = cpu_plan(bare_state, np.ones((B, T, D)), [np.zeros((B, 1))])
    assert bare.path == GENERIC and "not a tuple or list of arrays" in bare.reason


def test_a_python_step_plans_the_generic_loop():
    plan = cpu_plan(python_step, np.ones((B, T, D)), [np.zeros((B, 1))])
    assert plan == Plan("cpu", GENERIC, "not fused: the step function is neither a gpukb.cells "
                                        "cell nor compiled by Numba (numba.njit or gpukb.jit_step)")


# -- the run follows the plan, and the log says so -------------------------------------------


def test_each_call_logs_its_plan_on_the_gpukb_logger_at_debug(caplog):
    caplog.set_level(logging.DEBUG, logger="gpukb")
    gpukb.rnn(lstm(), zeros(B, T, D), [zeros(B, H), zeros(B, H)])
    gpukb.rnn(python_step, np.ones((B, T, D)), [np.zeros((B, 1))])
    records = [r for r in caplog.records if r.name == "gpukb"]
    assert [r.levelno for r in records] == [logging.DEBUG] * 2
    assert [r.gpukb_plan.path for r in records] == [FUSED_CELL, GENERIC]
    assert records[0].getMessage() == ("gpukb.rnn on backend 'cpu' (batch 2, 3 steps): fused_cell "
                                       "path, lstm cell in float32: the fused kernel runs the whole "
                                       "sequence")


def test_nothing_is_logged_above_debug(caplog):
    caplog.set_level(logging.INFO, logger="gpukb")
    gpukb.rnn(lstm(), zeros(B, T, D), [zeros(B, H), zeros(B, H)])
    assert not [r for r in caplog.records if r.name == "gpukb"]


def test_recorded_plans_restores_the_logger_level():
    logger = logging.getLogger("gpukb")
    before = logger.level
    with recorded_plans() as plans:
        gpukb.rnn(numba_step, np.ones((B, T, D)), [np.zeros((B, 1))])
    assert [p.path for p in plans] == [JIT_LOOP] and logger.level == before


# -- the hook for other backends: plan / run_plan, and fused_rnn for plugins -------------------


class _Plugin(gpukb.Backend):
    name = "plugin"
    array_types = ("numpy:ndarray",)

    def _load_xp(self):
        return np


class _Fused(_Plugin):
    def __init__(self, result):
        super().__init__()
        self.result = result

    def fused_rnn(self, call):
        return self.result


def test_a_backend_without_fused_kernels_plans_the_generic_loop():
    call = _rnn.prepare(python_step, np.ones((B, T, D)), [np.zeros((B, 1))])
    assert _Plugin().plan(call) == Plan("plugin", GENERIC, "the backend has no fused kernels")


def test_a_plugin_fused_rnn_is_planned_and_its_decline_logged_as_the_generic_loop():
    x, h = np.ones((B, T, D)), [np.zeros((B, 1))]
    sentinel = (np.zeros(1), np.zeros(1), [np.zeros(1)])
    with recorded_plans() as plans:
        assert _Fused(sentinel).rnn(python_step, x, h) is sentinel
        got = _Fused(NotImplemented).rnn(python_step, x, h)
    assert [(p.path, p.replaces) for p in plans] == [(FUSED_RNN, ""), (FUSED_RNN, ""),
                                                     (GENERIC, FUSED_RNN)]
    want = _rnn.run_generic(_rnn.prepare(python_step, x, h))
    np.testing.assert_array_equal(got[1], want[1])


def test_the_cpu_backend_still_answers_fused_rnn():
    cpu = gpukb.get_backend("cpu")
    x, states = zeros(B, T, D), [zeros(B, H), zeros(B, H)]
    fused = cpu.fused_rnn(_rnn.prepare(lstm(), x, states))
    np.testing.assert_array_equal(fused[1], gpukb.rnn(lstm(), x, states)[1])
    assert cpu.fused_rnn(_rnn.prepare(python_step, np.ones((B, T, D)), [np.zeros((B, 1))])) \
        is NotImplemented
