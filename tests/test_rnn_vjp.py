"""gpukb.rnn_vjp: its forward is gpukb.rnn's, and its pullback is the gradient of gpukb.rnn.

The reference is independent of the implementation: central finite differences, in float64, of
gpukb.rnn's forward (along random directions, one per argument, and entry by entry on one small
problem), on every cell kind and activation and on a hand-written step function with nested
inputs, states and constants, under every mask pattern and flag.
"""

import numpy as np
import optree
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import gpukb
from gpukb._plan import recorded_plans

ACTIVATIONS = gpukb.activations.SUPPORTED
EPS = 1e-6


# --------------------------------------------------------------------------------------------
# Problems: a cell or a step function, and the arguments of one call, all as named arrays
# --------------------------------------------------------------------------------------------

def cell_weights(kind, D, H, rng, reset_after=True, use_bias=True):
    gates = {"lstm": 4, "gru": 3, "simple_rnn": 1}[kind]
    W = 0.6 * rng.standard_normal((D, gates * H)) / np.sqrt(D)
    U = 0.6 * rng.standard_normal((H, gates * H)) / np.sqrt(H)
    shape = (2, 3 * H) if kind == "gru" and reset_after else (gates * H,)
    weights = {"kernel": W, "recurrent_kernel": U}
    if use_bias:
        weights["bias"] = 0.3 * rng.standard_normal(shape)
    return weights


def make_cell(kind, weights, act="tanh", ract="sigmoid", reset_after=True):
    W, U, b = weights["kernel"], weights["recurrent_kernel"], weights.get("bias")
    if kind == "lstm":
        return gpukb.cells.lstm(W, U, b, activation=act, recurrent_activation=ract)
    if kind == "gru":
        return gpukb.cells.gru(W, U, b, reset_after=reset_after, activation=act,
                               recurrent_activation=ract)
    return gpukb.cells.simple_rnn(W, U, b, activation=act)


def nested_step(bias):
    """A step with nested inputs {'a': (B, Da), 'b': (B, 1)}, states [h (B, H), [c (B, 2, H)]],
    constants [A (Da, H), s (a Python float)], output {'y': h', 'z': sum of c' over axis 1} and a
    weight of its own (``bias``), with its derivative written by hand."""

    def forward(x, states):
        h, (c,), A, s = states
        pre = x["a"] @ A + s * h + x["b"] * c.sum(axis=1) + bias
        h2 = np.tanh(pre)
        c2 = 0.5 * c + h2[:, None, :]
        return {"y": h2, "z": c2.sum(axis=1)}, [h2, [c2]]

    def step(x, states):
        return forward(x, states)

    def vjp(x, states):
        h, (c,), A, s = states
        output, new_states = forward(x, states)
        h2 = new_states[0]

        def pullback(d_output, d_new_states):
            gh, (gc,) = d_new_states
            gc = gc + d_output["z"][:, None, :]
            gpre = (d_output["y"] + gh + gc.sum(axis=1)) * (1 - h2 * h2)
            d_x = {"a": gpre @ A.T, "b": (gpre * c.sum(axis=1)).sum(axis=1, keepdims=True)}
            d_c = 0.5 * gc + (gpre * x["b"])[:, None, :]
            return d_x, (s * gpre, [d_c], x["a"].T @ gpre, None), {"bias": gpre.sum(axis=0)}

        return (output, new_states), pullback

    step.vjp = vjp
    return step


class Problem:
    """A call of rnn as named float64 arrays (``params``), rebuilt from any values of them."""

    def __init__(self, params, build, options):
        self.params = params
        self.build = build          # params -> (step_function, inputs, initial_states, constants)
        self.options = options

    def call(self, fn, params=None, dtype=None, **extra):
        params = self.params if params is None else params
        if dtype is not None:
            params = {k: v.astype(dtype) for k, v in params.items()}
        step, inputs, states, constants = self.build(params)
        return fn(step, inputs, states, constants=constants, **self.options, **extra)


def cell_problem(kind, rng, B, T, D, H, act="tanh", ract="sigmoid", reset_after=True,
                 use_bias=True, time_major=False, with_constants=False, **options):
    weights = cell_weights(kind, D, H, rng, reset_after, use_bias)
    n_states = 2 if kind == "lstm" else 1
    params = {f"w:{k}": v for k, v in weights.items()}
    params["x"] = rng.standard_normal((T, B, D) if time_major else (B, T, D))
    for k in range(n_states):
        params[f"s:{k}"] = rng.standard_normal((B, H))
    if with_constants:
        params["k:0"] = rng.standard_normal((B, 3))

    def build(p):
        cell = make_cell(kind, {k[2:]: v for k, v in p.items() if k.startswith("w:")}, act, ract,
                         reset_after)
        constants = [p["k:0"]] if with_constants else None
        return cell, p["x"], [p[f"s:{k}"] for k in range(n_states)], constants

    return Problem(params, build, dict(time_major=time_major, **options))


def step_problem(rng, B, T, H=3, Da=2, time_major=False, **options):
    lead = (T, B) if time_major else (B, T)
    params = {"x:a": rng.standard_normal(lead + (Da,)), "x:b": rng.standard_normal(lead + (1,)),
              "s:h": rng.standard_normal((B, H)), "s:c": rng.standard_normal((B, 2, H)),
              "k:A": 0.7 * rng.standard_normal((Da, H)), "w:bias": 0.2 * rng.standard_normal(H)}

    def build(p):
        return (nested_step(p["w:bias"]), {"a": p["x:a"], "b": p["x:b"]}, [p["s:h"], [p["s:c"]]],
                [p["k:A"], 0.8])

    return Problem(params, build, dict(time_major=time_major, **options))


def grads_by_name(problem, grads):
    """The gradient of each named param, from a Grads."""
    inputs = optree.tree_leaves(grads.inputs, none_is_leaf=True)
    states = optree.tree_leaves(grads.initial_states, none_is_leaf=True)
    constants = optree.tree_leaves(grads.constants, none_is_leaf=True)
    out = {}
    names = list(problem.params)
    for prefix, leaves in (("x", inputs), ("s", states), ("k", constants)):
        mine = [n for n in names if n.split(":")[0] == prefix]
        out.update(zip(mine, leaves))
    for n in names:
        if n.startswith("w:"):
            out[n] = grads.weights[n[2:]]
    return out


def cotangents(result, rng):
    last, outputs, states = result
    return (optree.tree_map(lambda a: rng.standard_normal(a.shape), outputs),
            optree.tree_map(lambda a: rng.standard_normal(a.shape), last),
            optree.tree_map(lambda a: rng.standard_normal(a.shape), states))


def loss(result, cots):
    return sum(float(np.sum(a * b)) for a, b in zip(optree.tree_leaves(result),
                                                    optree.tree_leaves(cots)))


def check_directional(problem, rng, rtol=1e-6):
    """For each param, <grad, v> against the central difference of the loss along a random v."""
    result, pullback = problem.call(gpukb.rnn_vjp)
    d_out, d_last, d_states = cotangents(result, rng)
    grads = grads_by_name(problem, pullback(d_out, d_last, list(d_states)))
    cots = (d_last, d_out, d_states)
    for name, value in problem.params.items():
        v = rng.standard_normal(value.shape)
        plus = dict(problem.params, **{name: value + EPS * v})
        minus = dict(problem.params, **{name: value - EPS * v})
        numeric = (loss(problem.call(gpukb.rnn, plus), cots)
                   - loss(problem.call(gpukb.rnn, minus), cots)) / (2 * EPS)
        analytic = float(np.sum(grads[name] * v))
        scale = np.sqrt(np.sum(grads[name] ** 2) * np.sum(v ** 2)) + 1e-3
        assert abs(numeric - analytic) <= rtol * scale, (name, numeric, analytic)


MASKS = ("none", "random", "left", "right", "empty_row", "first_masked", "lengths")


def mask_options(pattern, rng, B, T, time_major):
    if pattern == "none":
        return {}
    if pattern == "lengths":
        return {"input_length": rng.integers(0, T + 1, size=B)}
    m = rng.random((B, T)) < 0.6
    if pattern in ("left", "right"):
        lengths = rng.integers(0, T + 1, size=B)
        steps = np.arange(T)[None, :]
        m = steps < lengths[:, None] if pattern == "right" else steps >= T - lengths[:, None]
    elif pattern == "empty_row":
        m[rng.integers(B)] = False
    elif pattern == "first_masked":
        m[:, 0] = False
    return {"mask": m.T if time_major else m}


# --------------------------------------------------------------------------------------------
# Gradients against finite differences
# --------------------------------------------------------------------------------------------

@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(["lstm", "gru", "gru_before", "simple_rnn"]),
       act=st.sampled_from(ACTIVATIONS), ract=st.sampled_from(ACTIVATIONS),
       B=st.integers(1, 3), T=st.integers(1, 4), D=st.integers(1, 3), H=st.integers(1, 3),
       mask=st.sampled_from(MASKS), go_backwards=st.booleans(), zero_output=st.booleans(),
       return_all=st.booleans(), time_major=st.booleans(), use_bias=st.booleans(),
       with_constants=st.booleans(), seed=st.integers(0, 2**16))
def test_cell_gradients_match_finite_differences(kind, act, ract, B, T, D, H, mask, go_backwards,
                                                 zero_output, return_all, time_major, use_bias,
                                                 with_constants, seed):
    rng = np.random.default_rng(seed)
    problem = cell_problem(
        "gru" if kind == "gru_before" else kind, rng, B, T, D, H, act, ract,
        reset_after=kind != "gru_before", use_bias=use_bias, time_major=time_major,
        with_constants=with_constants, go_backwards=go_backwards,
        zero_output_for_mask=zero_output, return_all_outputs=return_all,
        **mask_options(mask, rng, B, T, time_major))
    check_directional(problem, rng)


@settings(max_examples=25, deadline=None)
@given(B=st.integers(1, 3), T=st.integers(1, 4), mask=st.sampled_from(MASKS),
       go_backwards=st.booleans(), zero_output=st.booleans(), return_all=st.booleans(),
       time_major=st.booleans(), seed=st.integers(0, 2**16))
def test_step_function_gradients_match_finite_differences(B, T, mask, go_backwards, zero_output,
                                                          return_all, time_major, seed):
    rng = np.random.default_rng(seed)
    problem = step_problem(rng, B, T, time_major=time_major, go_backwards=go_backwards,
                           zero_output_for_mask=zero_output, return_all_outputs=return_all,
                           **mask_options(mask, rng, B, T, time_major))
    check_directional(problem, rng)


def test_every_entry_of_every_gradient_on_a_small_masked_lstm():
    """Entry-by-entry central differences (not just directions) on one masked LSTM call."""
    rng = np.random.default_rng(3)
    mask = np.array([[True, False, True, True], [False, False, True, False]])
    problem = cell_problem("lstm", rng, 2, 4, 2, 2, mask=mask, go_backwards=True)
    result, pullback = problem.call(gpukb.rnn_vjp)
    d_out, d_last, d_states = cotangents(result, rng)
    grads = grads_by_name(problem, pullback(d_out, d_last, d_states))
    cots = (d_last, d_out, d_states)
    for name, value in problem.params.items():
        numeric = np.zeros_like(value)
        for index in np.ndindex(value.shape):
            plus, minus = value.copy(), value.copy()
            plus[index] += EPS
            minus[index] -= EPS
            numeric[index] = (loss(problem.call(gpukb.rnn, dict(problem.params, **{name: plus})), cots)
                              - loss(problem.call(gpukb.rnn, dict(problem.params, **{name: minus})),
                                     cots)) / (2 * EPS)
        np.testing.assert_allclose(grads[name], numeric, rtol=1e-6, atol=1e-8, err_msg=name)


@pytest.mark.parametrize("kind", ["lstm", "gru", "gru_before", "simple_rnn"])
def test_float32_within_tolerance_of_float64(kind):
    rng = np.random.default_rng(5)
    problem = cell_problem("gru" if kind == "gru_before" else kind, rng, 4, 6, 3, 5,
                           reset_after=kind != "gru_before",
                           mask=rng.random((4, 6)) < 0.7)
    results = {}
    for dtype in (np.float32, np.float64):
        result, pullback = problem.call(gpukb.rnn_vjp, dtype=dtype)
        cot = optree.tree_map(lambda a: np.linspace(-1, 1, a.size).reshape(a.shape).astype(dtype),
                              result[1])
        grads = grads_by_name(problem, pullback(cot))
        assert all(g.dtype == dtype for g in grads.values())
        results[dtype] = grads
    for name, want in results[np.float64].items():
        np.testing.assert_allclose(results[np.float32][name], want, rtol=1e-4,
                                   atol=1e-4 * np.abs(want).max(), err_msg=name)


# --------------------------------------------------------------------------------------------
# The forward, the plan, and what gradients look like
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["lstm", "gru", "simple_rnn", "step"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_forward_is_rnns_bitwise(kind, dtype):
    rng = np.random.default_rng(1)
    problem = (step_problem(rng, 3, 5) if kind == "step" else cell_problem(kind, rng, 3, 5, 2, 4))
    options = dict(mask=rng.random((3, 5)) < 0.5, go_backwards=True, return_all_outputs=False)
    (values, _), expected = (problem.call(gpukb.rnn_vjp, dtype=dtype, **options),
                             problem.call(gpukb.rnn, dtype=dtype, **options))
    for got, want in zip(optree.tree_leaves(values), optree.tree_leaves(expected)):
        assert got.dtype == want.dtype and np.array_equal(got, want)


def test_plan_is_logged_as_rnn_vjp():
    rng = np.random.default_rng(0)
    problem = step_problem(rng, 2, 3)
    with recorded_plans() as plans:
        problem.call(gpukb.rnn_vjp)
    assert [plan.path for plan in plans] == ["generic"]


def test_gradients_have_the_arguments_structure_and_none_for_non_floating_leaves():
    rng = np.random.default_rng(2)
    problem = step_problem(rng, 2, 3)
    (_, outputs, _), pullback = problem.call(gpukb.rnn_vjp)
    grads = pullback(optree.tree_map(np.ones_like, outputs))
    assert set(grads.inputs) == {"a", "b"} and grads.inputs["a"].shape == (2, 3, 2)
    assert isinstance(grads.initial_states, list) and grads.initial_states[1][0].shape == (2, 2, 3)
    assert grads.constants[0].shape == (2, 3) and grads.constants[1] is None   # 0.8: a scalar
    assert set(grads.weights) == {"bias"}
    cell = make_cell("gru", cell_weights("gru", 2, 3, rng, use_bias=False))
    (_, out, _), pullback = gpukb.rnn_vjp(cell, rng.standard_normal((2, 3, 2)), (np.zeros((2, 3)),))
    grads = pullback(np.ones_like(out))
    assert set(grads.weights) == {"kernel", "recurrent_kernel"} and grads.constants is None
    assert isinstance(grads.initial_states, tuple)


def test_gradients_in_the_dtype_of_the_arguments_given():
    """A float32 cell casts float64 inputs; their gradients come back in float64."""
    rng = np.random.default_rng(4)
    weights = {k: v.astype(np.float32) for k, v in cell_weights("lstm", 2, 3, rng).items()}
    x = rng.standard_normal((2, 4, 2))
    (_, out, _), pullback = gpukb.rnn_vjp(make_cell("lstm", weights), x,
                                          [np.zeros((2, 3), np.float32)] * 2)
    grads = pullback(np.ones_like(out))
    assert out.dtype == np.float32 and grads.inputs.dtype == np.float64
    assert grads.weights["kernel"].dtype == np.float32


def test_pullback_can_be_called_again():
    rng = np.random.default_rng(6)
    problem = cell_problem("gru", rng, 2, 3, 2, 3, mask=rng.random((2, 3)) < 0.5)
    (_, out, _), pullback = problem.call(gpukb.rnn_vjp)
    first = pullback(np.ones_like(out))
    second = pullback(np.ones_like(out))
    assert np.array_equal(first.inputs, second.inputs)


def test_masked_steps_pass_state_gradient_and_hand_output_gradient_back():
    """The rule itself on a tiny case: a masked step's output repeats the previous output, so
    its cotangent lands on that step; with zero_output_for_mask it is dropped."""
    rng = np.random.default_rng(7)
    cell = make_cell("simple_rnn", cell_weights("simple_rnn", 1, 1, rng), act="linear")
    x = np.ones((1, 3, 1))
    h0 = [np.ones((1, 1))]
    mask = np.array([[True, False, False]])
    for zero_out in (False, True):
        (_, out, _), pullback = gpukb.rnn_vjp(cell, x, h0, mask=mask, zero_output_for_mask=zero_out)
        d_out = np.array([[[0.0], [1.0], [10.0]]])
        grads = pullback(d_out)
        expected = 0.0 if zero_out else 11.0 * cell.kernel[0, 0]   # through step 0's output
        assert grads.inputs[0, 0, 0] == pytest.approx(expected)
        assert np.all(grads.inputs[0, 1:] == 0)
        d_state = pullback(np.zeros_like(d_out), d_new_states=[np.ones((1, 1))])
        assert d_state.inputs[0, 0, 0] == pytest.approx(cell.kernel[0, 0])


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------

def test_step_without_derivative_is_a_type_error_before_any_step():
    calls = []

    def step(x, states):
        calls.append(1)
        return x, states

    with pytest.raises(TypeError, match=r"carries no derivative.*vjp"):
        gpukb.rnn_vjp(step, np.zeros((2, 3, 1)), [np.zeros((2, 1))])
    step.vjp = "not callable"
    with pytest.raises(TypeError, match="step_function.vjp must be callable"):
        gpukb.rnn_vjp(step, np.zeros((2, 3, 1)), [np.zeros((2, 1))])
    assert calls == []


def test_bad_vjp_return_is_a_type_error():
    def step(x, states):
        return x, states

    step.vjp = lambda x, states: step(x, states)
    with pytest.raises(TypeError, match=r"must return \(\(output, new_states\), step_pullback\)"):
        gpukb.rnn_vjp(step, np.zeros((2, 3, 1)), [np.zeros((2, 1))])


@pytest.mark.parametrize("returned, error, message", [
    (lambda dx, dh: dx, TypeError, r"must return \(d_step_input, d_states\)"),
    (lambda dx, dh: (dx, dh), ValueError, "one item per item of states"),
    (lambda dx, dh: (dx, [dh, dh]), ValueError, "one item per item of states"),
    (lambda dx, dh: ([dx, dx], [dh]), ValueError, "d_step_input has 2 leaves"),
    (lambda dx, dh: (dx, [dh], [1.0]), TypeError, "d_weights must be a dict"),
])
def test_bad_step_pullback_returns_are_errors(returned, error, message):
    def step(x, states):
        return x, [x]

    def vjp(x, states):
        return step(x, states), lambda d_out, d_new: returned(d_out, d_new[0])

    step.vjp = vjp
    (_, outputs, _), pullback = gpukb.rnn_vjp(step, np.zeros((2, 3, 1)), [np.zeros((2, 1))])
    with pytest.raises(error, match=message):
        pullback(np.ones_like(outputs))


@pytest.mark.parametrize("bad", [dict(go_backwards="yes"), dict(mask=np.zeros((3, 3))),
                                 dict(input_length=7), dict(time_major=2)])
def test_argument_errors_are_rnns(bad):
    cell = make_cell("simple_rnn", cell_weights("simple_rnn", 1, 2, np.random.default_rng(0)))
    args = (cell, np.zeros((2, 3, 1)), [np.zeros((2, 2))])
    with pytest.raises(Exception) as expected:
        gpukb.rnn(*args, **bad)
    with pytest.raises(type(expected.value)) as got:
        gpukb.rnn_vjp(*args, **bad)
    assert str(got.value) == str(expected.value)


def test_pullback_arguments_are_checked():
    rng = np.random.default_rng(8)
    cell = make_cell("lstm", cell_weights("lstm", 2, 3, rng))
    (_, out, _), pullback = gpukb.rnn_vjp(cell, rng.standard_normal((2, 4, 2)),
                                          [np.zeros((2, 3))] * 2)
    with pytest.raises(ValueError, match=r"d_outputs must have the shape.*\(2, 4, 3\).*\(2, 4, 2\)"):
        pullback(np.zeros((2, 4, 2)))
    with pytest.raises(ValueError, match="d_outputs must have the dtype.*float64.*float32"):
        pullback(out.astype(np.float32))
    with pytest.raises(TypeError, match="d_outputs must be an array, got float"):
        pullback(1.0)
    with pytest.raises(ValueError, match="d_outputs must have the structure"):
        pullback([out, out])
    with pytest.raises(ValueError, match=r"d_last_output must have the shape.*\(2, 3\)"):
        pullback(out, d_last_output=out)
    with pytest.raises(ValueError, match="d_new_states has 1 item.*new_states has 2"):
        pullback(out, d_new_states=[np.zeros((2, 3))])
    with pytest.raises(TypeError, match="d_new_states must be None or a list or tuple"):
        pullback(out, d_new_states=np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"d_new_states\[1\] must have the shape"):
        pullback(out, d_new_states=[None, np.zeros((3, 3))])
    grads = pullback(None, d_new_states=[None, np.ones((2, 3))])   # None: zeros
    assert np.any(grads.inputs != 0)


# --------------------------------------------------------------------------------------------
# The cpu backend's fused vjp against the generic path
# --------------------------------------------------------------------------------------------

def generic_vjp(cell, x, states, **options):
    """The generic path's forward and pullback for the same call (the base Backend's)."""
    from gpukb._backend import Backend
    from gpukb._plan import GENERIC, Plan

    backend = gpukb.get_backend("cpu")
    call = backend.prepare(cell, x, states, **options)
    return Backend.run_vjp_plan(backend, Plan("cpu", GENERIC, "test"), call, (x, states))


@pytest.mark.parametrize("kind", ["lstm", "gru", "gru_before", "simple_rnn"])
@pytest.mark.parametrize("zero_output", [False, True])
@pytest.mark.parametrize("return_all", [False, True])
def test_last_output_cotangent_at_a_masked_last_step(kind, zero_output, return_all):
    """d_last_output reaches the fused backward apart from d_outputs (it starts the carried
    output cotangent): at a masked last step it flows to the last valid step's output, or
    nowhere when masked outputs are zeros; every sample's last step masked or not."""
    rng = np.random.default_rng(11)
    B, T, D, H = 4, 5, 3, 4
    reset_after = kind != "gru_before"
    kind = "gru" if kind == "gru_before" else kind
    cell = make_cell(kind, cell_weights(kind, D, H, rng, reset_after), reset_after=reset_after)
    x = rng.standard_normal((B, T, D))
    states = [rng.standard_normal((B, H)) for _ in cell.state_size]
    mask = np.arange(T)[None, :] < np.array([T, 3, 0, 1])[:, None]   # right-padded, one full
    options = dict(mask=mask, zero_output_for_mask=zero_output, return_all_outputs=return_all)
    fused, fused_pullback = gpukb.rnn_vjp(cell, x, states, **options)
    _, generic_pullback = generic_vjp(cell, x, states, **options)
    for d_out_scale in (0.0, 1.0):   # d_last_output alone, then with d_outputs
        d_out, d_last, d_states = cotangents(fused, rng)
        d_out = optree.tree_map(lambda a: a * d_out_scale, d_out)
        got, want = (pullback(d_out, d_last, d_states)
                     for pullback in (fused_pullback, generic_pullback))
        for name in ("inputs", "initial_states", "weights"):
            for a, b in zip(optree.tree_leaves(getattr(got, name)),
                            optree.tree_leaves(getattr(want, name))):
                np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12, err_msg=name)


def test_cells_take_the_fused_vjp_path():
    rng = np.random.default_rng(0)
    for kind, reset_after in (("lstm", True), ("gru", True), ("gru", False), ("simple_rnn", True)):
        weights = cell_weights(kind, 2, 3, rng, reset_after)
        cell = make_cell(kind, weights, reset_after=reset_after)
        states = [np.zeros((2, 3))] * (2 if kind == "lstm" else 1)
        with recorded_plans() as plans:
            gpukb.rnn_vjp(cell, rng.standard_normal((2, 4, 2)), states)
        assert [plan.path for plan in plans] == ["fused_cell"], plans
    half = make_cell("simple_rnn", {k: v.astype(np.float16) for k, v in weights.items()})
    with recorded_plans() as plans:
        gpukb.rnn_vjp(half, np.zeros((2, 4, 2), np.float16), [np.zeros((2, 3), np.float16)])
    assert [plan.path for plan in plans] == ["generic"] and "float16" in plans[0].reason


@settings(max_examples=30, deadline=None)
@given(kind=st.sampled_from(["lstm", "gru", "gru_before", "simple_rnn"]),
       act=st.sampled_from(ACTIVATIONS), ract=st.sampled_from(ACTIVATIONS),
       dtype=st.sampled_from([np.float32, np.float64]), B=st.integers(1, 5), T=st.integers(1, 6),
       D=st.integers(1, 4), H=st.integers(1, 6), mask=st.sampled_from(MASKS),
       go_backwards=st.booleans(), zero_output=st.booleans(), return_all=st.booleans(),
       time_major=st.booleans(), use_bias=st.booleans(), seed=st.integers(0, 2**16))
def test_fused_equals_generic(kind, act, ract, dtype, B, T, D, H, mask, go_backwards, zero_output,
                              return_all, time_major, use_bias, seed):
    rng = np.random.default_rng(seed)
    reset_after = kind != "gru_before"
    kind = "gru" if kind == "gru_before" else kind
    weights = {k: v.astype(dtype) for k, v in
               cell_weights(kind, D, H, rng, reset_after, use_bias).items()}
    cell = make_cell(kind, weights, act, ract, reset_after)
    x = rng.standard_normal((T, B, D) if time_major else (B, T, D)).astype(dtype)
    states = [rng.standard_normal((B, H)).astype(dtype) for _ in cell.state_size]
    options = dict(go_backwards=go_backwards, zero_output_for_mask=zero_output,
                   return_all_outputs=return_all, time_major=time_major,
                   **mask_options(mask, rng, B, T, time_major))
    fused, fused_pullback = gpukb.rnn_vjp(cell, x, states, **options)
    generic, generic_pullback = generic_vjp(cell, x, states, **options)
    d_out, d_last, d_states = (optree.tree_map(lambda a: a.astype(dtype), c)
                               for c in cotangents(fused, rng))
    got = fused_pullback(d_out, d_last, d_states)
    want = generic_pullback(d_out, d_last, d_states)
    tol = dict(rtol=2e-4, atol=2e-5) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-12)
    for a, b in zip(optree.tree_leaves(fused), optree.tree_leaves(generic)):
        np.testing.assert_allclose(a, b, **tol)
    for name in ("inputs", "initial_states", "weights"):
        for a, b in zip(optree.tree_leaves(getattr(got, name)), optree.tree_leaves(getattr(want, name))):
            assert a.dtype == b.dtype == dtype and a.shape == b.shape
            np.testing.assert_allclose(a, b, err_msg=name, **tol)
    assert sorted(got.weights) == sorted(want.weights)


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_activation_derivatives_from_the_output(name):
    """The kernels' scalar derivative and the generic path's array one, both from the output,
    against central differences of the activation (points near a kink left out)."""
    from gpukb._vjp.cell_steps import derivative as array_derivative
    from gpukb.kernels.cells import activations as table

    act = gpukb.activations.get(name, np)
    x = np.linspace(-4, 4, 161) + 0.013
    x = x[np.min(np.abs(x[:, None] - np.array([-3, -2.5, 0, 2.5, 3])), axis=1) > 1e-3]
    numeric = (act(x + EPS) - act(x - EPS)) / (2 * EPS)
    y = act(x)
    scalar = np.array([table.derivative(table.code(name), v) for v in y])
    np.testing.assert_allclose(scalar, numeric, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(array_derivative(name, y, np), numeric, rtol=1e-6, atol=1e-9)
    assert array_derivative(name, y.astype(np.float32), np).dtype == np.float32
