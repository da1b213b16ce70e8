"""Conformance of one backend with gpukb's float64 NumPy reference of the rnn semantics.

Run it against any installed backend:  GPUKB_TEST_BACKEND=name python -m pytest --pyargs gpukb.testing
The backend gets every problem as its own arrays (converted with ``asarray``), random shapes, masks
and flags from hypothesis, generic step functions and the Keras cells (its fused paths).
"""

from __future__ import annotations

import os

import numpy as np
import optree
import pytest
from hypothesis import HealthCheck, assume, given, settings, strategies as st

import gpukb
from gpukb.testing.conformance import (
    BackendStep, assert_close_trees, backend_kwargs, backend_under_test, to_backend, to_numpy,
)
from gpukb.testing.reference import rnn_reference
from gpukb.testing.strategies import rnn_problems

EXAMPLES = int(os.environ.get("GPUKB_TEST_EXAMPLES", "40"))
conformance_settings = settings(max_examples=EXAMPLES, deadline=None,
                                suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def backend():
    name = backend_under_test()
    if name not in gpukb.list_backends():
        pytest.fail(f"GPUKB_TEST_BACKEND={name!r} is not installed; found {gpukb.list_backends()}")
    try:
        return gpukb.get_backend(name)
    except RuntimeError as error:
        pytest.skip(str(error))


def tolerance(dtype):
    return dict(rtol=2e-4, atol=2e-5) if np.dtype(dtype) == np.float32 else dict(rtol=1e-10, atol=1e-12)


@conformance_settings
@given(problem=rnn_problems())
def test_generic_step_matches_reference(backend, problem):
    expected = rnn_reference(**problem.kwargs())
    kwargs = backend_kwargs(backend, problem.kwargs())
    step = BackendStep(backend, problem.step_function)
    kwargs["step_function"] = step
    result = gpukb.rnn(**kwargs, backend=backend.name)
    last, outputs, states = to_numpy(backend, result)
    assert step.calls == problem.time_steps  # once the results are read: a backend may be lazy
    tol = tolerance(problem.dtype)
    assert_close_trees(outputs, expected[1], what="outputs", **tol)
    assert_close_trees(last, expected[0], what="last_output", **tol)
    assert_close_trees(states, expected[2], what="new_states", **tol)
    for leaf in optree.tree_leaves(outputs):
        assert leaf.dtype == problem.dtype


def _cell(kind, rng, D, H, dtype, use_bias, activation, recurrent_activation, reset_after):
    gates = {"lstm": 4, "gru": 3, "simple_rnn": 1}[kind]
    # Scaled so that even all-linear LSTMs (whose gates multiply) stay bounded over a few steps.
    kernel = (0.5 * rng.standard_normal((D, gates * H)) / np.sqrt(D)).astype(dtype)
    recurrent = (0.5 * rng.standard_normal((H, gates * H)) / np.sqrt(H)).astype(dtype)
    bias_shape = (2, 3 * H) if kind == "gru" and reset_after else (gates * H,)
    bias = (0.1 * rng.standard_normal(bias_shape)).astype(dtype) if use_bias else None
    if kind == "lstm":
        return gpukb.cells.lstm(kernel, recurrent, bias, activation, recurrent_activation)
    if kind == "gru":
        return gpukb.cells.gru(kernel, recurrent, bias, reset_after, activation, recurrent_activation)
    return gpukb.cells.simple_rnn(kernel, recurrent, bias, activation)


@st.composite
def cell_problems(draw):
    kind = draw(st.sampled_from(["lstm", "gru", "simple_rnn"]))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    B, T, D, H = (draw(st.integers(1, n)) for n in (4, 6, 5, 6))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    activations = st.sampled_from(["tanh", "sigmoid", "hard_sigmoid", "relu", "linear"])
    cell = _cell(kind, rng, D, H, dtype, draw(st.booleans()), draw(activations), draw(activations),
                 draw(st.booleans()))
    time_major = draw(st.booleans())
    x = rng.standard_normal((T, B, D) if time_major else (B, T, D)).astype(dtype)
    states = [rng.standard_normal((B, H)).astype(dtype) for _ in cell.state_size]
    options = dict(go_backwards=draw(st.booleans()), time_major=time_major,
                   zero_output_for_mask=draw(st.booleans()),
                   return_all_outputs=draw(st.booleans()), unroll=draw(st.booleans()))
    mask_kind = draw(st.sampled_from(["none", "random", "left", "right", "lengths"]))
    if mask_kind == "lengths":
        options["input_length"] = np.array(draw(st.lists(st.integers(0, T), min_size=B, max_size=B)))
    elif mask_kind != "none":
        lengths = np.array(draw(st.lists(st.integers(0, T), min_size=B, max_size=B)))
        t = np.arange(T)
        valid = {"left": t[None] >= T - lengths[:, None], "right": t[None] < lengths[:, None],
                 "random": rng.random((B, T)) < 0.6}[mask_kind]
        options["mask"] = valid.T if time_major else valid
    return cell, x, states, options


@conformance_settings
@given(problem=cell_problems())
def test_keras_cells_match_reference(backend, problem):
    cell, x, states, options = problem
    cell64 = cell.converted(lambda w: np.asarray(w, np.float64))
    expected = rnn_reference(cell64, x.astype(np.float64), [s.astype(np.float64) for s in states], **options)
    # Unbounded activations (relu, linear) can grow without limit: where the float64 values leave
    # float32's useful range, float32 rounding (or overflow) is not a conformance question.
    if x.dtype == np.float32:
        assume(all(np.all(np.abs(leaf) < 1e6) for leaf in optree.tree_leaves(expected)))
    kwargs = backend_kwargs(backend, dict(inputs=x, initial_states=states, **options))
    result = gpukb.rnn(cell, **kwargs, backend=backend.name)
    last, outputs, new_states = to_numpy(backend, result)
    tol = tolerance(x.dtype)
    assert_close_trees(outputs, expected[1], what="outputs", **tol)
    assert_close_trees(last, expected[0], what="last_output", **tol)
    assert_close_trees(new_states, expected[2], what="new_states", **tol)
    assert outputs.dtype == x.dtype and all(s.dtype == x.dtype for s in new_states)


def test_errors_come_before_any_step(backend):
    calls = []

    def step(x, states):
        calls.append(1)
        return x, states

    x = backend.asarray(np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match="rank"):
        gpukb.rnn(step, x, [backend.asarray(np.zeros((2, 1), np.float32))], backend=backend.name)
    x3 = backend.asarray(np.zeros((2, 3, 1), np.float32))
    with pytest.raises(TypeError):
        gpukb.rnn(step, x3, backend.asarray(np.zeros((2, 1), np.float32)), backend=backend.name)
    with pytest.raises(ValueError, match="mask"):
        gpukb.rnn(step, x3, [backend.asarray(np.zeros((2, 1), np.float32))],
                  mask=backend.asarray(np.ones((3, 2), bool)), backend=backend.name)
    assert calls == []


def test_returns_the_backends_array_type(backend):
    x = backend.asarray(np.ones((2, 3, 1), np.float32))
    h = backend.asarray(np.zeros((2, 1), np.float32))
    last, outputs, states = gpukb.rnn(lambda xt, s: (xt + s[0], [xt + s[0]]), x, [h], backend=backend.name)
    assert type(outputs) is type(x) and type(last) is type(x) and type(states[0]) is type(x)
    np.testing.assert_allclose(backend.to_numpy(outputs)[:, :, 0], [[1, 2, 3], [1, 2, 3]])
