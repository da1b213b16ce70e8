"""gpukb.rnn against what tf.keras 2.21's backend.rnn returned (tests/fixtures/tf_keras_rnn.*).

Every case where the spec follows tf.keras must match it; every case the spec marks as a
deliberate deviation must give the spec's answer (the float64 reference) and not tf.keras's.
"""

import json
import pathlib

import numpy as np
import pytest

import gpukb
from gpukb.testing.reference import rnn_reference

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
INDEX = json.loads((FIXTURES / "tf_keras_rnn.json").read_text())
ARRAYS = np.load(FIXTURES / "tf_keras_rnn.npz")
CASES = INDEX["cases"]


def make_step(A, U, n_states, nested):
    """The fixture's step function (its json 'step_function'), in NumPy."""

    def step(x, states):
        h = states[0]
        s = states[1] if n_states == 2 else None
        consts = states[n_states:]
        pre = (x["a"] @ A + x["b"] * 0.5) if nested else x @ A
        pre = pre + h @ U
        if s is not None:
            pre = pre + s[..., 0] * 0.1
        if consts:
            pre = pre + consts[0]
        y = np.tanh(pre)
        new_states = [0.5 * y + 0.25 * h]
        if s is not None:
            new_states.append(np.stack([0.9 * s[..., 0] + y, s[..., 1] - y], -1))
        return ((y, 2.0 * y) if nested else y), new_states

    return step


def case_call(name):
    case = CASES[name]
    a = {key: ARRAYS[f"{name}/{key}"] for key in case["arrays"]}
    flags = case["flags"]
    nested = case.get("nested", False)
    inputs = {"a": a["x_a"], "b": a["x_b"]} if nested else a["x"]
    states = [a["h0"]] + ([a["s0"]] if case["n_states"] == 2 else [])
    kwargs = dict(go_backwards=flags["go_backwards"], unroll=flags["unroll"],
                  time_major=flags["time_major"], zero_output_for_mask=flags["zero_output_for_mask"],
                  return_all_outputs=flags["return_all_outputs"])
    if flags["mask"]:
        kwargs["mask"] = a["mask"]
    if flags["constants"]:
        kwargs["constants"] = [a["const"]]
    if flags["input_length"] is not None:
        kwargs["input_length"] = (int(flags["input_length"]) if flags["input_length_form"] == "int"
                                  else a["input_length"])
    step = make_step(a["A"], a["U"], case["n_states"], nested)
    if nested:
        tf_result = ((a["last_output_0"], a["last_output_1"]), (a["outputs_0"], a["outputs_1"]))
    else:
        tf_result = (a["last_output"], a["outputs"])
    tf_states = [a[f"new_state_{i}"] for i in range(case["n_states"])]
    return step, inputs, states, kwargs, tf_result, tf_states


def flat(tree):
    import optree

    return [np.asarray(leaf) for leaf in optree.tree_leaves(tree)]


def assert_same(actual, expected, **tol):
    actual, expected = flat(actual), flat(expected)
    assert len(actual) == len(expected)
    for x, y in zip(actual, expected):
        assert x.shape == y.shape
        np.testing.assert_allclose(x, y, **tol)


TOL = dict(rtol=1e-5, atol=1e-6)
# Cases where tf.keras raised have no results to compare (the core's tests cover unroll=True).
RAN = {n: c for n, c in CASES.items() if "tf_keras_error" not in c}
FOLLOWED = sorted(n for n, c in RAN.items() if c["matches_spec_reference"])
DEVIATIONS = sorted(n for n, c in RAN.items() if not c["matches_spec_reference"])


def test_fixture_index_covers_the_masking_cases():
    assert len(FOLLOWED) >= 30 and len(DEVIATIONS) >= 4
    kinds = {CASES[n]["flags"]["mask"] for n in FOLLOWED}
    assert {"random", "left_padded", "right_padded", "all_masked_row", "first_step_masked"} <= kinds


@pytest.mark.parametrize("name", FOLLOWED)
def test_matches_tf_keras(name):
    step, inputs, states, kwargs, tf_result, tf_states = case_call(name)
    calls = []

    def counted(x, s):
        calls.append(1)
        return step(x, s)

    last, outputs, new_states = gpukb.rnn(counted, inputs, states, **kwargs)
    assert_same(outputs, tf_result[1], **TOL)
    assert_same(last, tf_result[0], **TOL)
    assert_same(new_states, tf_states, **TOL)
    assert isinstance(new_states, list)  # the container of initial_states (tf.keras gives a tuple)
    assert len(calls) == CASES[name]["T"]  # tf.keras's loop path calls the step T + 1 times


@pytest.mark.parametrize("name", DEVIATIONS)
def test_deviations_follow_the_spec(name):
    step, inputs, states, kwargs, tf_result, tf_states = case_call(name)
    if CASES[name]["flags"]["input_length_form"] == "int":
        with pytest.raises(ValueError, match="input_length"):
            gpukb.rnn(step, inputs, states, **kwargs)
        return
    last, outputs, new_states = gpukb.rnn(step, inputs, states, **kwargs)
    expected = rnn_reference(step, inputs, states, **kwargs)
    assert_same(outputs, expected[1], rtol=1e-5, atol=1e-6)
    assert_same(new_states, expected[2], rtol=1e-5, atol=1e-6)
    differs = any(not np.allclose(x, y, **TOL) for x, y in zip(flat(outputs), flat(tf_result[1])))
    assert differs, f"{name}: expected gpukb to differ from tf.keras here ({CASES[name]['deviation']})"
