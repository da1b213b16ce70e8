"""The cuda backend decides, then runs: the plan it logs for each call (gpukb._plan), checked with
``recorded_plans`` under the CUDA simulator, and that the plan is what runs."""

from __future__ import annotations

import numpy as np
import pytest

import gpukb
from gpukb._plan import GENERIC, PER_STEP, PERSISTENT, recorded_plans
from gpukb.kernels.cuda import persistent
from gpukb.testing.reference import rnn_reference

from backend_settings import cell_path

D, T, H = 2, 3, 4


def lstm_problem(B, dtype=np.float32, H=H):
    rng = np.random.default_rng(B)
    cell = gpukb.cells.lstm(*(rng.standard_normal(s).astype(dtype)
                              for s in [(D, 4 * H), (H, 4 * H), (4 * H,)]))
    x = rng.standard_normal((B, T, D)).astype(dtype)
    return cell, x, [np.zeros((B, H), dtype), np.zeros((B, H), dtype)]


def planned(step, x, states, path="auto", **options):
    """(the one plan logged for the call, the call's result)."""
    with cell_path(path), recorded_plans() as plans:
        result = gpukb.rnn(step, x, states, backend="cuda", **options)
    assert len(plans) == 1, plans
    assert plans[0].backend == "cuda"
    return plans[0], result


def test_a_small_batch_plans_the_persistent_kernel_with_its_tiling():
    cell, x, states = lstm_problem(B=2)
    plan, result = planned(cell, x, states)
    assert plan.path == PERSISTENT
    tiling = plan.detail
    assert isinstance(tiling, persistent.Plan) and tiling.batch_tile == 2
    assert "batch 2" in plan.reason and f"{tiling.threads} threads" in plan.reason
    np.testing.assert_allclose(result[1], rnn_reference(cell, x, states)[1], rtol=1e-5, atol=1e-5)


def test_a_batch_over_the_persistent_limit_plans_per_step_and_says_why():
    B = persistent.PERSISTENT_MAX_BATCH + 1
    cell, x, states = lstm_problem(B=B)
    plan, result = planned(cell, x, states)
    assert (plan.path, plan.detail) == (PER_STEP, None)
    assert f"batch {B} is over its limit of {persistent.PERSISTENT_MAX_BATCH}" in plan.reason
    np.testing.assert_allclose(result[1], rnn_reference(cell, x, states)[1], rtol=1e-5, atol=1e-5)


def test_units_that_fit_no_tiling_plan_per_step_and_say_why():
    cell, x, states = lstm_problem(B=1, H=1024)   # U alone is over the shared-memory budget
    with cell_path("auto"):
        plan = gpukb.get_backend("cuda").plan(_prepared(cell, x, states))
    assert plan.path == PER_STEP and "no tiling of 1024 units fits" in plan.reason


def _prepared(step, x, states, **options):
    from gpukb import _rnn

    return _rnn.prepare(step, x, states, xp=np, backend="cuda", **options)


@pytest.mark.parametrize("path, wanted", [("step", PER_STEP), ("persistent", PERSISTENT)])
def test_cell_path_forces_the_kernel(path, wanted):
    cell, x, states = lstm_problem(B=persistent.PERSISTENT_MAX_BATCH + 1)
    plan, _ = planned(cell, x, states, path=path)
    assert plan.path == wanted
    if path == "step":
        assert plan.reason == "cell_path is 'step'"


@pytest.mark.parametrize("masked", [False, True])
def test_generic_cell_path_plans_the_generic_loop(masked):
    cell, x, states = lstm_problem(B=2)
    mask = np.array([[True, False, True], [True, True, False]]) if masked else None
    plan, result = planned(cell, x, states, path="generic", mask=mask)
    assert plan.path == GENERIC and plan.reason.startswith("not fused: cell_path is 'generic'")
    assert plan.reason.endswith("one masking kernel per step" if masked
                                else "no mask, so no masking kernel")
    expected = rnn_reference(cell, x, states, mask=mask)
    np.testing.assert_allclose(result[1], expected[1], rtol=1e-5, atol=1e-5)


def test_a_python_step_function_plans_the_generic_loop():
    def step(x, states):
        return states[0] + x, [states[0] + x]

    x = np.ones((2, T, 3), np.float32)
    plan, _ = planned(step, x, [np.zeros((2, 3), np.float32)], mask=np.ones((2, T), bool))
    assert plan.path == GENERIC
    assert plan.reason == ("not fused: the step function is not a gpukb.cells cell; one masking "
                           "kernel per step")


def test_a_cell_call_no_fused_kernel_takes_plans_the_generic_loop_with_the_problem():
    cell, x, states = lstm_problem(B=2)
    with cell_path("auto"):   # nested inputs: the generic loop would run the cell
        plan = gpukb.get_backend("cuda").plan(_prepared(cell, {"x": x}, states))
    assert plan.path == GENERIC
    assert plan.reason == ("not fused: the inputs are nested; the fused kernels take one array; "
                           "no mask, so no masking kernel")


def test_fused_rnn_hook_follows_the_plan():
    backend = gpukb.get_backend("cuda")
    cell, x, states = lstm_problem(B=2)
    with cell_path("auto"):
        assert backend.fused_rnn(_prepared(cell, x, states)) is not NotImplemented
    with cell_path("generic"):
        assert backend.fused_rnn(_prepared(cell, x, states)) is NotImplemented
