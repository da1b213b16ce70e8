"""rnn_vjp on the cuda backend, under the CUDA simulator: the fused backward (driven by
gpukb.backends._cuda_vjp), its reverse loop per step (gpukb.kernels.cuda.backward; cell_path
"step") or in one launch (gpukb.kernels.cuda.persistent_backward; "auto" at these small batches,
and multi-block grid-sync tilings through grid_sync.py), gives the gradients of the cpu backend's
fused vjp (the same algorithm, written independently: Numba CPU kernels), over cells x
activations x masks (random with the first step masked, left and right padded, an all-masked row,
input_length) x flags, and logs the plan it runs. The persistent backward's dot products sum in
another order than the GEMMs: float64 to a tolerance, not bitwise.

Shapes are tiny: the simulator runs every GPU thread as a Python thread. On a GPU the same tests
run on CuPy arrays (``asv_bench/results-gpu/run_checks.sh`` runs this file with ``--noconftest``,
since this folder's conftest collects it only under the simulator).
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest

import gpukb
from gpukb._plan import GENERIC, PER_STEP, PERSISTENT, Plan, recorded_plans

from backend_settings import cell_path

CUDA = gpukb.get_backend("cuda")

B, T, D, H = 4, 4, 2, 2
# One row per pattern: holes with the first step masked, left padded, right padded, all masked.
MIXED = np.array([[0, 1, 0, 1], [0, 0, 1, 1], [1, 1, 0, 0], [0, 0, 0, 0]], bool)
LENGTHS = np.array([4, 1, 3, 2])
GATES = {"lstm": 4, "gru": 3, "gru_before": 3, "simple_rnn": 1}


def make_cell(kind, rng, dtype=np.float64, act="tanh", ract="sigmoid", use_bias=True):
    g = GATES[kind]
    W = 0.8 * rng.standard_normal((D, g * H))
    U = 0.8 * rng.standard_normal((H, g * H))
    b = 0.3 * rng.standard_normal((2, 3 * H) if kind == "gru" else (g * H,)) if use_bias else None
    W, U = W.astype(dtype), U.astype(dtype)
    b = None if b is None else b.astype(dtype)
    if kind == "lstm":
        return gpukb.cells.lstm(W, U, b, activation=act, recurrent_activation=ract)
    if kind == "simple_rnn":
        return gpukb.cells.simple_rnn(W, U, b, activation=act)
    return gpukb.cells.gru(W, U, b, reset_after=kind == "gru", activation=act,
                           recurrent_activation=ract)


def to_device(a):
    """A NumPy array as the cuda backend's array: itself in the simulator, else a CuPy copy."""
    if CUDA.simulated:
        return a
    import cupy

    return cupy.asarray(a)


def options_on_device(options):
    """rnn's keyword arguments with their arrays (mask, input_length) moved by to_device."""
    return {k: to_device(v) if isinstance(v, np.ndarray) else v for k, v in options.items()}


def to_host(tree):
    import optree

    return optree.tree_map(CUDA.to_numpy, tree)


def vjp_and_grads(backend, cell, x, states, options, cotangents):
    """(forward result, Grads, the plans logged) of one rnn_vjp call and one pullback call, as
    NumPy arrays (the cuda backend's call runs on its own arrays)."""
    move = to_device if backend == "cuda" else (lambda a: a)
    options = options_on_device(options) if backend == "cuda" else options
    with recorded_plans() as plans:
        result, pullback = gpukb.rnn_vjp(cell, move(x), [move(s) for s in states],
                                         backend=backend, **options)
        result = to_host(result)
        d_out, d_last, d_states = cotangents(result)
        grads = pullback(move(d_out), move(d_last), [move(d) for d in d_states])
    grads = type(grads)(inputs=to_host(grads.inputs), initial_states=to_host(grads.initial_states),
                        constants=grads.constants, weights=to_host(grads.weights))
    return result, grads, plans


def random_cotangents(seed):
    def make(result):
        rng = np.random.default_rng(seed)
        last, outputs, new_states = result
        return (rng.standard_normal(outputs.shape).astype(outputs.dtype),
                rng.standard_normal(last.shape).astype(last.dtype),
                [rng.standard_normal(s.shape).astype(s.dtype) for s in new_states])

    return make


def assert_grads_close(got, want, rtol, atol):
    np.testing.assert_allclose(got.inputs, want.inputs, rtol=rtol, atol=atol)
    assert len(got.initial_states) == len(want.initial_states)
    for g, w in zip(got.initial_states, want.initial_states):
        np.testing.assert_allclose(g, w, rtol=rtol, atol=atol)
    assert got.weights.keys() == want.weights.keys()
    for name in want.weights:
        np.testing.assert_allclose(got.weights[name], want.weights[name], rtol=rtol, atol=atol,
                                   err_msg=name)
    assert got.constants is None and want.constants is None


# kind, activation, recurrent activation, mask ("mixed", "lengths" or None), flags, cell_path
# ("auto": the persistent forward and backward at this batch; "step": both per step)
CASES = [
    ("lstm", "tanh", "sigmoid", "mixed", {}, "auto"),
    ("lstm", "relu", "hard_sigmoid", "mixed", dict(go_backwards=True, zero_output_for_mask=True),
     "auto"),
    ("lstm", "tanh", "sigmoid", None, dict(time_major=True, return_all_outputs=False), "step"),
    ("gru", "tanh", "sigmoid", "mixed", dict(time_major=True, go_backwards=True), "auto"),
    ("gru", "linear", "hard_sigmoid_keras3", "lengths", dict(return_all_outputs=False), "step"),
    ("gru_before", "tanh", "sigmoid", "mixed", dict(zero_output_for_mask=True), "step"),
    ("gru_before", "hard_sigmoid", "sigmoid", "mixed",
     dict(go_backwards=True, return_all_outputs=False, time_major=True), "auto"),
    ("simple_rnn", "relu", "linear", "mixed", {}, "auto"),
    ("simple_rnn", "sigmoid", "linear", "lengths",
     dict(go_backwards=True, zero_output_for_mask=True), "step"),
]


def problem(kind, act, ract, mask, flags, seed, dtype=np.float64, use_bias=True):
    rng = np.random.default_rng(seed)
    cell = make_cell(kind, rng, dtype, act, ract, use_bias)
    tm = flags.get("time_major", False)
    x = rng.standard_normal((T, B, D) if tm else (B, T, D)).astype(dtype)
    states = [rng.standard_normal((B, H)).astype(dtype) for _ in cell.state_size]
    options = dict(flags)
    if mask == "mixed":
        options["mask"] = MIXED.T if tm else MIXED
    elif mask == "lengths":
        options["input_length"] = LENGTHS
    return cell, x, states, options


@pytest.mark.parametrize("case", range(len(CASES)))
def test_fused_cuda_vjp_equals_the_cpu_fused_vjp_float64(case):
    kind, act, ract, mask, flags, path = CASES[case]
    cell, x, states, options = problem(kind, act, ract, mask, flags, seed=case,
                                       use_bias=case != 7)
    cotangents = random_cotangents(100 + case)
    with cell_path(path):
        result, grads, plans = vjp_and_grads("cuda", cell, x, states, options, cotangents)
    want_result, want, cpu_plans = vjp_and_grads("cpu", cell, x, states, options, cotangents)
    assert [p.path for p in cpu_plans] == ["fused_cell"]   # the reference is the CPU fused vjp
    wanted = PER_STEP if path == "step" else PERSISTENT
    assert len(plans) == 1 and plans[0].backend == "cuda" and plans[0].path == wanted
    assert f"forward on the {wanted} path" in plans[0].reason
    backward = "backward per step" if path == "step" else "backward persistent: one launch"
    assert backward in plans[0].reason
    assert (plans[0].detail is None) == (path == "step")   # the forward's tiling
    for got, expected in zip([result[0], result[1], *result[2]],
                             [want_result[0], want_result[1], *want_result[2]]):
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-13)
    assert_grads_close(grads, want, rtol=1e-11, atol=1e-12)
    assert ("bias" in grads.weights) == (case != 7)


@pytest.mark.parametrize("kind, path", [("lstm", "step"), ("gru_before", "auto")])
def test_float32_fused_cuda_vjp_is_close_to_float64(kind, path):
    flags = dict(go_backwards=kind == "gru_before")
    cell, x, states, options = problem(kind, "tanh", "sigmoid", "mixed", flags, seed=7)
    cotangents = random_cotangents(8)
    want = vjp_and_grads("cpu", cell, x, states, options, cotangents)[1]
    cell32, x32, states32, _ = problem(kind, "tanh", "sigmoid", "mixed", flags, seed=7,
                                       dtype=np.float32)
    with cell_path(path):
        _, grads, plans = vjp_and_grads("cuda", cell32, x32, states32, options,
                                        random_cotangents(8))
    assert plans[0].path == (PER_STEP if path == "step" else PERSISTENT)
    assert "in float32" in plans[0].reason
    assert grads.inputs.dtype == np.float32
    assert all(w.dtype == np.float32 for w in grads.weights.values())
    assert_grads_close(grads, want, rtol=2e-4, atol=2e-5)


@pytest.mark.parametrize("path", ["auto", "step"])
def test_the_forward_is_rnn_bitwise(path):
    cell, x, states, options = problem("gru", "tanh", "sigmoid", "mixed", {}, seed=3)
    x, states, options = to_device(x), [to_device(s) for s in states], options_on_device(options)
    with cell_path(path):
        (last, outputs, new_states), _ = gpukb.rnn_vjp(cell, x, states, backend="cuda", **options)
        want = gpukb.rnn(cell, x, states, backend="cuda", **options)
    for got, expected in zip([last, outputs, *new_states], [want[0], want[1], *want[2]]):
        assert np.array_equal(to_host(got), to_host(expected))


def test_residuals_and_recompute_give_the_direct_pullbacks_gradients_bitwise():
    """rnn_vjp(return_residuals=True) keeps every step's output only, rnn_pullback rebuilds the
    pullback from it, and recompute=True runs the same vjp: the gradients of all three are the
    same bits (the same kernels on the same arrays)."""
    cell, x, states, options = problem("lstm", "tanh", "sigmoid", "mixed",
                                       dict(go_backwards=True), seed=11)
    x, states, options = to_device(x), [to_device(s) for s in states], options_on_device(options)
    args = (cell, x, states)
    d_out, d_last, d_states = random_cotangents(12)(
        to_host(gpukb.rnn(*args, backend="cuda", **options)))
    cotangents = (to_device(d_out), to_device(d_last), [to_device(d) for d in d_states])
    result, direct, residuals = gpukb.rnn_vjp(*args, backend="cuda", return_residuals=True,
                                              **options)
    specs = gpukb.rnn_residual_specs(*args, backend="cuda", **options)
    assert specs == (((B, T, H), np.dtype(np.float64)),)   # every step's output, nothing more
    assert [(tuple(r.shape), r.dtype) for r in residuals] == list(specs)
    rebuilt = gpukb.rnn_pullback(residuals, *args, backend="cuda", **options)
    recomputed_result, recomputed = gpukb.rnn_vjp(*args, backend="cuda", recompute=True,
                                                  **options)
    for got, want in zip(to_host([recomputed_result[1], *recomputed_result[2]]),
                         to_host([result[1], *result[2]])):
        assert np.array_equal(got, want)

    def leaves(grads):
        return to_host([grads.inputs, *grads.initial_states, *grads.weights.values()])

    want = leaves(direct(*cotangents))
    for pullback in (rebuilt, recomputed):
        got = leaves(pullback(*cotangents))
        assert len(got) == len(want) == 6   # inputs, h, c, kernel, recurrent_kernel, bias
        for left, right in zip(got, want):
            assert np.array_equal(left, right)


def test_the_generic_cell_path_plans_the_generic_vjp_with_the_same_gradients():
    cell, x, states, options = problem("lstm", "tanh", "sigmoid", None, {}, seed=5)
    backend = gpukb.get_backend("cuda")
    cotangents = random_cotangents(6)
    with cell_path("generic"):
        _, generic, plans = vjp_and_grads("cuda", cell, x, states, options, cotangents)
        assert backend.fused_rnn_vjp(_prepared(cell, x, states)) is NotImplemented
    assert [p.path for p in plans] == [GENERIC]
    assert plans[0].reason.startswith("not fused: cell_path is 'generic'")
    with cell_path("auto"):
        _, fused, plans = vjp_and_grads("cuda", cell, x, states, options, cotangents)
        hook = backend.fused_rnn_vjp(_prepared(cell, x, states))
    assert [p.path for p in plans] == [PERSISTENT]
    assert hook is not NotImplemented and len(hook) == 2   # (result, backward)
    assert_grads_close(fused, generic, rtol=1e-11, atol=1e-12)


def _prepared(cell, x, states, **options):
    """The validated call the backend's hooks take, on the backend's arrays."""
    import optree

    from gpukb import _rnn

    xp = CUDA.xp
    return _rnn.prepare(cell.converted(xp.asarray), optree.tree_map(to_device, x),
                        [to_device(s) for s in states], xp=xp, backend="cuda", **options)


def test_calls_no_fused_kernel_takes_plan_the_generic_vjp_and_say_why():
    cell, x, states, _ = problem("simple_rnn", "tanh", "linear", None, {}, seed=9)
    backend = gpukb.get_backend("cuda")
    with cell_path("auto"):
        nested = backend.plan_vjp(_prepared(cell, {"x": x}, states))
    assert nested.path == GENERIC
    assert nested.reason.startswith("not fused: the inputs are nested")

    def step(x, states):
        return states[0] + x, [states[0] + x]

    step.vjp = lambda x, states: ((states[0] + x, [states[0] + x]),
                                  lambda d_out, d_states: (d_out + d_states[0],
                                                           [d_out + d_states[0]]))
    with recorded_plans() as plans:
        gpukb.rnn_vjp(step, to_device(np.ones((2, T, 3))), [to_device(np.zeros((2, 3)))],
                      backend="cuda")
    assert [p.path for p in plans] == [GENERIC]
    assert plans[0].reason.startswith("not fused: the step function is not a gpukb.cells cell")


@pytest.mark.parametrize("kind", ["lstm", "gru_before"])
def test_multi_block_persistent_backward_with_grid_syncs_equals_the_cpu_fused_vjp(kind):
    """Each sample's units split over blocks (a grid sync every reverse step; GRU without
    reset_after: two), its rows over two batch tiles, dot products over two threads; in the
    simulator every block runs at once (grid_sync.py), as on a GPU. A random mask, go_backwards."""
    from gpukb.kernels.cuda import persistent

    rng = np.random.default_rng(21)
    cell, x, states, options = problem(kind, "tanh", "sigmoid", None, dict(go_backwards=True),
                                       seed=22)
    options["mask"] = rng.random((B, T)) < 0.6
    cotangents = random_cotangents(23)
    tiling = persistent.plan(B, H, cell.kernel_layout.kind, 8, unit_tile=1, batch_tile=2,
                             ksplit=2, coop=True, max_blocks=64)
    assert (tiling.unit_blocks, tiling.batch_blocks, tiling.ksplit, tiling.coop) == (H, 2, 2, True)
    plan = Plan("cuda", PERSISTENT, "a multi-block tiling, forced", detail=tiling)
    x_dev, states_dev = to_device(x), [to_device(s) for s in states]
    call = _prepared(cell, x, states, **dict(options, mask=to_device(options["mask"])))
    with _all_blocks_at_once() as launches:
        result, pullback = CUDA.run_vjp_plan(plan, call, (x_dev, states_dev))
        d_out, d_last, d_states = cotangents(result)
        grads = pullback(to_device(d_out), to_device(d_last), [to_device(d) for d in d_states])
    assert launches() == (2 if CUDA.simulated else None)   # the persistent forward, backward
    want_result, want, _ = vjp_and_grads("cpu", cell, x, states, options, cotangents)
    np.testing.assert_allclose(to_host(result[1]), want_result[1], rtol=1e-12, atol=1e-13)
    grads = type(grads)(inputs=to_host(grads.inputs), initial_states=to_host(grads.initial_states),
                        constants=grads.constants, weights=to_host(grads.weights))
    assert_grads_close(grads, want, rtol=1e-11, atol=1e-12)


@contextlib.contextmanager
def _all_blocks_at_once():
    """In the simulator, launches through grid_sync.py's runner (yields how many ran); on a GPU
    nothing to do (yields a function returning None)."""
    if not CUDA.simulated:
        yield lambda: None
        return
    from test_sim_grid_sync import CooperativeLauncher, cooperative_launches

    CooperativeLauncher.launches = 0
    with cooperative_launches():
        yield lambda: CooperativeLauncher.launches
