"""Numba-compiled step functions run in one compiled time loop with the generic loop's results.

The step functions are module-level so every hypothesis example reuses the same compiled code
(one loop per number of states and dtype): the file stays within its time budget.
Steps use only exactly rounded scalar arithmetic (no tanh), so Python running ``.py_func`` and
Numba agree bit for bit; explicit loops compile much faster than broadcasting array expressions.
"""

import contextlib
import warnings

import numba
import numpy as np
import optree
import pytest
from hypothesis import given, strategies as st

import gpukb
from gpukb import _rnn
from gpukb._jit_step import JitStep
from gpukb._plan import recorded_plans
from gpukb.backends import _jit_loop
from gpukb.testing.reference import rnn_reference

from helpers import run_python

# -- step functions (constants: W of shape (2, H) in the input dtype, then an int64 call counter) --


@numba.njit
def step0(x, states):
    W, count = states
    count[0] += 1
    out = np.empty((x.shape[0], W.shape[1]), x.dtype)
    for b in range(x.shape[0]):
        for j in range(W.shape[1]):
            out[b, j] = x[b, 0] * W[0, j] + W[1, j]
    return out, ()


@gpukb.jit_step
def step1(x, states):
    h, W, count = states
    count[0] += 1
    h2 = np.empty_like(h)
    out = np.empty_like(h)
    for b in range(h.shape[0]):
        for j in range(h.shape[1]):
            h2[b, j] = h[b, j] * W[1, j] + x[b, 0] * W[0, j]
            out[b, j] = h2[b, j] - W[0, j]
    return out, [h2]


@numba.njit
def step2(x, states):
    h, m, W, count = states  # h (B, H), m (B, 2, H)
    count[0] += 1
    h2 = np.empty_like(h)
    m2 = np.empty_like(m)
    out = np.empty_like(h)
    for b in range(h.shape[0]):
        for j in range(h.shape[1]):
            h2[b, j] = h[b, j] * W[1, j] + x[b, 0] * W[0, j]
            for k in range(2):
                m2[b, k, j] = m[b, k, j] * W[0, j] + h2[b, j]
            out[b, j] = h2[b, j] + m2[b, 1, j]
    return out, (h2, m2)


@gpukb.jit_step(cache=False)
def step3(x, states):
    h, m, g, W, count = states  # g (B, G) int32: returned as a reversed view of itself
    count[0] += 1
    h2 = np.empty_like(h)
    m2 = np.empty_like(m)
    out = np.empty_like(m)  # a rank-3 output
    for b in range(h.shape[0]):
        for j in range(h.shape[1]):
            h2[b, j] = h[b, j] * W[1, j] + x[b, 0] * W[0, j]
            for k in range(2):
                m2[b, k, j] = m[b, k, j] * W[1, j] - h[b, j]
                out[b, k, j] = m2[b, k, j] + h2[b, j]
    return out, (h2, m2, g[:, ::-1])


STEPS = {0: step0, 1: step1, 2: step2, 3: step3}


def py_func(step):
    return step.py_func


@contextlib.contextmanager
def planned():
    """The paths the cpu backend planned for the calls in the block ("jit_loop" or "generic"),
    from the plans gpukb.rnn logs (gpukb._plan); the plans themselves in ``.plans``."""
    with recorded_plans() as plans:
        paths = _Paths()
        yield paths
    paths.plans = [plan for plan in plans if plan.backend == "cpu"]
    paths.extend(plan.path for plan in paths.plans)


class _Paths(list):
    plans: list = []


def make_states(n_states, B, H, G, dtype, rng):
    shapes = [(B, H), (B, 2, H), (B, G)][:n_states]
    states = [rng.standard_normal(s).astype(dtype) for s in shapes]
    if n_states == 3:
        states[2] = rng.integers(-50, 50, (B, G)).astype(np.int32)
    return states


def valid_table(draw, kind, B, T, go_backwards):
    lengths = np.array(draw(st.lists(st.integers(0, T), min_size=B, max_size=B)))
    times = np.arange(T)
    if kind == "right_padded":
        return times[None, :] < lengths[:, None]
    if kind == "left_padded":
        return times[None, :] >= T - lengths[:, None]
    valid = np.array(draw(st.lists(st.booleans(), min_size=B * T, max_size=B * T)), bool).reshape(B, T)
    if kind == "all_masked_row":
        valid[draw(st.integers(0, B - 1))] = False
    elif kind == "first_step_masked":
        valid[:, T - 1 if go_backwards else 0] = False
    return valid


def assert_same(got, want, exact=True, **tol):
    assert type(got[2]) is type(want[2])  # new states in the container of initial_states
    got_leaves, got_spec = optree.tree_flatten(tuple(got))
    want_leaves, want_spec = optree.tree_flatten(tuple(want))
    assert got_spec == want_spec
    for a, b in zip(got_leaves, want_leaves):
        assert a.shape == b.shape
        if exact:
            assert a.dtype == b.dtype
            np.testing.assert_array_equal(a, b)
        else:
            np.testing.assert_allclose(a, b, **tol)


@given(data=st.data(), n_states=st.integers(0, 3), dtype=st.sampled_from([np.float32, np.float64]),
       time_major=st.booleans(), B=st.integers(1, 4), T=st.integers(1, 6), D=st.integers(1, 3),
       H=st.integers(1, 4), G=st.integers(1, 3), seed=st.integers(0, 2**31))
def test_fused_equals_generic_and_reference(data, n_states, dtype, time_major, B, T, D, H, G, seed):
    rng = np.random.default_rng(seed)
    step = STEPS[n_states]
    go_backwards = data.draw(st.booleans(), "go_backwards")
    x = rng.standard_normal((T, B, D) if time_major else (B, T, D)).astype(dtype)
    states = make_states(n_states, B, H, G, dtype, rng)
    states = tuple(states) if data.draw(st.booleans(), "tuple") else states
    W = rng.standard_normal((2, H)).astype(dtype)
    count = np.zeros(1, np.int64)
    options = dict(go_backwards=go_backwards, time_major=time_major,
                   unroll=data.draw(st.booleans(), "unroll"),
                   zero_output_for_mask=data.draw(st.booleans(), "zero_output_for_mask"),
                   return_all_outputs=data.draw(st.booleans(), "return_all_outputs"))
    kind = data.draw(st.sampled_from(["none", "random", "right_padded", "left_padded", "all_masked_row",
                                      "first_step_masked", "input_length", "input_length_int"]), "mask")
    if kind == "input_length":
        options["input_length"] = np.array(data.draw(st.lists(st.integers(0, T), min_size=B, max_size=B)))
    elif kind == "input_length_int":
        options["input_length"] = T
    elif kind != "none":
        valid = valid_table(data.draw, kind, B, T, go_backwards)
        mask = valid.T if time_major else valid
        if data.draw(st.booleans(), "int mask (.., 1)"):
            mask = mask.astype(np.int32)[..., None] * 3
        options["mask"] = mask

    with planned() as taken:
        fused = gpukb.rnn(step, x, states, constants=(W, count), **options)
    assert taken == ["jit_loop"]
    assert count[0] == T  # the step ran exactly T times
    generic = _rnn.run_generic(_rnn.prepare(py_func(step), x, states, constants=(W, count), **options))
    assert count[0] == 2 * T
    assert_same(fused, generic)
    reference = rnn_reference(py_func(step), x, states, constants=(W, count), **options)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    assert_same(fused, reference, exact=False, **tol)


def test_steps_that_use_tanh_match_the_generic_loop_bit_for_bit():
    """The generic loop calling the same dispatcher gives the very same bits (tanh included)."""

    @numba.njit
    def tanh_rnn(x, states):
        h, W, U, b = states
        h2 = np.tanh(x * W + h * U + b)  # same-shape array expressions
        return h2, (h2,)

    rng = np.random.default_rng(3)
    B, T, H = 3, 7, 5
    base = rng.standard_normal((B, 2 * T, H))
    x = base[:, ::2]  # a strided (non-contiguous) input
    h0 = rng.standard_normal((B, H))
    consts = [rng.standard_normal((B, H)) for _ in range(3)]
    mask = rng.random((B, T)) < 0.7
    for options in ({}, dict(mask=mask, go_backwards=True), dict(mask=mask, zero_output_for_mask=True)):
        with planned() as taken:
            fused = gpukb.rnn(tanh_rnn, x, [h0], constants=consts, **options)
        assert taken == ["jit_loop"]
        generic = _rnn.run_generic(_rnn.prepare(tanh_rnn, x, [h0], constants=consts, **options))
        assert_same(fused, generic)


def test_bare_njit_and_jit_step_forms_all_take_the_fused_path():
    def body(x, states):
        h, W, count = states
        count[0] += 1
        h2 = np.empty_like(h)
        for b in range(h.shape[0]):
            for j in range(h.shape[1]):
                h2[b, j] = h[b, j] * W[1, j] + x[b, 0] * W[0, j]
        return h2, (h2,)

    bare = numba.njit(body)
    marked = gpukb.jit_step(body)
    with_options = gpukb.jit_step(cache=False, boundscheck=True)(body)
    assert isinstance(marked, JitStep) and marked.py_func is body and marked.__name__ == "body"
    assert with_options.options == {"cache": False, "boundscheck": True}
    assert gpukb.jit_step(marked) is marked and "jit_step" in gpukb.__all__

    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 4, 3))
    h = rng.standard_normal((2, 5))
    W = rng.standard_normal((2, 5))
    want = _rnn.run_generic(_rnn.prepare(body, x, [h], constants=[W, np.zeros(1, np.int64)]))
    for step in (bare, marked, with_options):
        count = np.zeros(1, np.int64)
        with planned() as taken:
            got = gpukb.rnn(step, x, [h], constants=[W, count])
        assert taken == ["jit_loop"] and count[0] == 4
        assert_same(got, want)
    # a jit_step is still a plain step function: NumPy arrays run the compiled code
    out, (h2,) = marked(x[:, 0], (h, W, np.zeros(1, np.int64)))
    np.testing.assert_array_equal(out, body(x[:, 0], (h, W, np.zeros(1, np.int64)))[0])


def test_jit_step_runs_plain_python_for_other_arrays_without_numba(tmp_path):
    calls = []

    @gpukb.jit_step
    def step(x, states):
        calls.append(type(x).__name__)
        return x["a"] + states[0], [x["a"] + states[0]]

    x = {"a": np.ones((2, 3, 4))}  # a dict input: not for Numba, and not for the fused loop
    with planned() as taken:
        last, outputs, (h,) = gpukb.rnn(step, x, [np.zeros((2, 4))])
    assert taken == ["generic"] and calls == ["dict"] * 3 and step._dispatcher is None
    np.testing.assert_array_equal(h, np.full((2, 4), 3.0))

    code = ("import sys, gpukb\n"
            "f = gpukb.jit_step(lambda x, s: (x, s))\n"
            "g = gpukb.jit_step(cache=True)(lambda x, s: (x, s))\n"
            "print('numba' in sys.modules)")
    result = run_python(code, home=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


@numba.njit
def _returns_bare_state(x, states):
    return x * 1.0, x * 2.0  # new_states a bare array: one state, for the generic loop


@numba.njit
def _returns_nested_output(x, states):
    return (x * 1.0, x * 2.0), (x * 3.0,)


@numba.njit
def _nested_states(x, states):
    return x * 1.0, ((x * 2.0,),)


@numba.njit
def _nine_states(x, states):
    return x * 1.0, states[:9]


def _plain_python(x, states):
    return x * 1.0, (x * 2.0,)


@pytest.mark.parametrize("case", ["bare_state", "nested_output", "nested_states", "nine_states",
                                  "python_step", "dict_inputs", "float16", "scalar_constant"])
def test_ineligible_calls_run_the_generic_loop(case):
    x = np.ones((2, 3, 4))
    h = np.zeros((2, 4))
    step, states, inputs, kw = {
        "bare_state": (_returns_bare_state, [h], x, {}),
        "nested_output": (_returns_nested_output, [h], x, {}),
        "nested_states": (_nested_states, [[h]], x, {}),
        "nine_states": (_nine_states, [h] * 9, x, {}),
        "python_step": (_plain_python, [h], x, {}),
        "dict_inputs": (_returns_bare_state, [h], x, {}),
        "float16": (_plain_python, [h.astype(np.float16)], x.astype(np.float16), {}),
        "scalar_constant": (_plain_python, [h], x, {"constants": [2.0]}),
    }[case]
    if case == "float16":  # Numba has no float16 arithmetic: the jit_step warns and runs Python
        step = gpukb.jit_step(_plain_python)
    if case == "scalar_constant":
        step = numba.njit(_plain_python)
    if case == "dict_inputs":
        step = gpukb.jit_step(lambda x, s: (x["a"] * 1.0, x["a"] * 2.0))
        inputs = {"a": x}
    with planned() as taken, warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        got = gpukb.rnn(step, inputs, states, **kw)
    assert taken == ["generic"]
    want = _rnn.run_generic(_rnn.prepare(getattr(step, "py_func", step), inputs, states, **kw))
    assert_same(got, want)


@numba.njit
def _failing(x, states):
    """mode[0]: 1 state shape, 2 output shape, 3 state count, 4 no batch axis; at call mode[1]."""
    h, g, mode, count = states
    count[0] += 1
    fail = count[0] == mode[1]
    h2 = h * 0.5 + x[:, :1]
    g2 = g + 1.0
    out = h2 * 1.0
    if fail and mode[0] == 1:
        g2 = g2[:, :-1].copy()
    if fail and mode[0] == 2:
        out = h2[:, :-1].copy()
    if fail and mode[0] == 4:
        out = np.zeros((x.shape[0] + 1, 2))
    if fail and mode[0] == 3:
        return out, [h2]
    return out, [h2, g2]


@pytest.mark.parametrize("mode,at", [(1, 1), (1, 3), (2, 2), (3, 1), (3, 4), (4, 1)])
def test_errors_are_the_generic_loops(mode, at):
    x = np.ones((2, 5, 3))
    states = [np.zeros((2, 4)), np.zeros((2, 3))]
    control = np.array([mode, at], np.int64)
    count = np.zeros(1, np.int64)
    with planned() as taken, pytest.raises(ValueError) as fused:
        gpukb.rnn(_failing, x, states, constants=[control, count])
    assert taken == ["jit_loop"] and count[0] == at  # raised by the fused loop, after `at` steps
    generic_count = np.zeros(1, np.int64)
    with pytest.raises(ValueError) as generic:
        _rnn.run_generic(_rnn.prepare(_failing.py_func, x, states, constants=[control, generic_count]))
    assert str(fused.value) == str(generic.value) and generic_count[0] == at
    if mode == 1:
        assert "initial_states[1]" in str(fused.value)


def test_dtype_changes_raise_the_generic_error():
    @numba.njit
    def to_float32(x, states):
        return x[:, 0] * 1.0, (states[0].astype(np.float32),)

    with planned() as taken, pytest.raises(ValueError, match=r"changed the dtype of state initial_states\[0\]"):
        gpukb.rnn(to_float32, np.ones((2, 3, 4)), [np.zeros((2, 4))])
    assert taken == ["generic"]  # refused before any step ran; the generic loop raised
    assert "new state 0 is array(float32" in taken.plans[0].reason  # the plan says why


def _not_numba_typable(h):
    return h * 2.0


def test_typing_errors():
    def step(x, states):
        return x * 1.0, (_not_numba_typable(states[0]),)

    x = np.ones((2, 3, 4))
    h = np.zeros((2, 4))
    # a bare njit function: Numba's own TypingError, as the generic loop would raise it
    with pytest.raises(numba.core.errors.TypingError):
        gpukb.rnn(numba.njit(step), x, [h])
    # a jit_step falls back to its Python function, once warned, with the same results
    marked = gpukb.jit_step(step)
    with pytest.warns(RuntimeWarning, match="could not compile step function 'step'"):
        got = gpukb.rnn(marked, x, [h])
    assert not marked.compiled and marked.compile_error is not None
    assert_same(got, _rnn.run_generic(_rnn.prepare(step, x, [h])))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gpukb.rnn(marked, x, [h])
    with planned() as taken:
        gpukb.rnn(marked, x, [h])
    assert taken == ["generic"]  # it runs as Python now, without another compile attempt
    assert "runs as Python" in taken.plans[0].reason


def test_jit_loop_rule_needs_numpy_and_a_numba_step():
    x = np.ones((2, 3, 4))
    constants = [np.ones((2, 4)), np.zeros(1, np.int64)]
    h = [np.zeros((2, 4))]
    assert _jit_loop.problem(_rnn.prepare(step1, x, h, constants=constants)) is None
    python_step = _rnn.prepare(step1.py_func, x, h, constants=constants)
    assert "nor compiled by Numba" in _jit_loop.problem(python_step)
    assert _jit_loop.problem(_rnn.prepare(step0, x, [], constants=constants)) is None
    forceobj = numba.jit(forceobj=True)(lambda a, s: (a, s))
    assert "nor compiled by Numba" in _jit_loop.problem(_rnn.prepare(forceobj, x, []))