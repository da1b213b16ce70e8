"""The rnn semantics core (gpukb._rnn): against the float64 reference, and the spec's facts by hand."""

import numpy as np
import optree
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpukb._rnn import RnnCall, prepare, run_generic
from gpukb.testing.reference import rnn_reference
from gpukb.testing.strategies import MASK_KINDS, rnn_problems


def rnn(step_function, inputs, initial_states, **kwargs):
    return run_generic(prepare(step_function, inputs, initial_states, xp=np, **kwargs))


def col(*values):
    """Values over time for one sample, as (1, T, 1) inputs."""
    return np.array(values, dtype=np.float64).reshape(1, -1, 1)


class Counter:
    """Wraps a step function and counts its calls."""

    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, x, states):
        self.calls += 1
        return self.fn(x, states)


def accumulate(x, states):
    """h <- h + x; output = h."""
    h = states[0] + x
    return h, [h]


# ---------------------------------------------------------------------------------------------
# Core against the reference, over random problems
# ---------------------------------------------------------------------------------------------

TOLERANCE = {np.float64: dict(rtol=1e-10, atol=1e-12), np.float32: dict(rtol=2e-4, atol=2e-5)}


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_core_matches_reference(dtype, data):
    problem = data.draw(rnn_problems(dtypes=(dtype,)))
    last, outputs, states = rnn(**problem.kwargs())
    assert problem.step_function.calls == problem.time_steps
    ref_last, ref_outputs, ref_states = rnn_reference(**problem.kwargs())

    assert optree.tree_structure(outputs) == optree.tree_structure(ref_outputs)
    assert optree.tree_structure(last) == optree.tree_structure(ref_last)
    assert optree.tree_structure(states) == optree.tree_structure(problem.initial_states)
    assert type(states) is type(problem.initial_states)
    for got, want in zip(optree.tree_leaves((last, outputs)), optree.tree_leaves((ref_last, ref_outputs))):
        assert got.shape == want.shape
        assert got.dtype == dtype  # outputs take the step output's dtype
        np.testing.assert_allclose(got, want, **TOLERANCE[dtype])
    for got, want, initial in zip(
        optree.tree_leaves(states), optree.tree_leaves(ref_states), optree.tree_leaves(problem.initial_states)
    ):
        assert got.shape == initial.shape and got.dtype == initial.dtype
        np.testing.assert_allclose(got, want, **TOLERANCE[dtype])
    # last_output is the last row of outputs
    for buf, row in zip(optree.tree_leaves(outputs), optree.tree_leaves(last)):
        np.testing.assert_array_equal(row, buf[-1] if problem.options["time_major"] else buf[:, -1])


@settings(max_examples=40, deadline=None)
@given(problem=rnn_problems())
def test_unroll_is_bitwise_identical(problem):
    kwargs = problem.kwargs()
    kwargs.pop("unroll")
    looped = rnn(unroll=False, **kwargs)
    unrolled = rnn(unroll=True, **kwargs)
    assert optree.tree_structure(looped) == optree.tree_structure(unrolled)
    for a, b in zip(optree.tree_leaves(looped), optree.tree_leaves(unrolled)):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert a.tobytes() == b.tobytes()


def test_strategies_cover_every_mask_kind():
    assert set(MASK_KINDS) >= {"random", "left_padded", "right_padded", "all_masked_row", "first_step_masked"}


# ---------------------------------------------------------------------------------------------
# The spec's facts, as small hand-computed cases (accumulate: h <- h + x, output h)
# ---------------------------------------------------------------------------------------------

def test_first_step_masked_gives_zeros_not_initial_state():
    last, outputs, states = rnn(accumulate, col(1, 2, 3), [np.full((1, 1), 10.0)], mask=np.array([[0, 1, 1]]))
    np.testing.assert_array_equal(outputs.ravel(), [0, 12, 15])
    np.testing.assert_array_equal(last.ravel(), [15])
    np.testing.assert_array_equal(states[0].ravel(), [15])


def test_masked_output_holds_previous_output_and_state():
    mask = np.array([[1, 0, 1]])
    _, outputs, states = rnn(accumulate, col(1, 2, 3), [np.full((1, 1), 10.0)], mask=mask)
    np.testing.assert_array_equal(outputs.ravel(), [11, 11, 14])
    np.testing.assert_array_equal(states[0].ravel(), [14])


def test_masked_last_step_holds_output_and_state():
    last, outputs, states = rnn(accumulate, col(1, 2, 3), [np.zeros((1, 1))], mask=np.array([[1, 1, 0]]))
    np.testing.assert_array_equal(outputs.ravel(), [1, 3, 3])
    np.testing.assert_array_equal(last.ravel(), [3])
    np.testing.assert_array_equal(states[0].ravel(), [3])


def test_zero_output_for_mask():
    mask = np.array([[1, 0, 1]])
    last, outputs, states = rnn(
        accumulate, col(1, 2, 3), [np.full((1, 1), 10.0)], mask=mask, zero_output_for_mask=True
    )
    np.testing.assert_array_equal(outputs.ravel(), [11, 0, 14])
    np.testing.assert_array_equal(states[0].ravel(), [14])
    _, outputs, _ = rnn(
        accumulate, col(1, 2, 3), [np.zeros((1, 1))], mask=np.array([[1, 1, 0]]), zero_output_for_mask=True
    )
    np.testing.assert_array_equal(outputs.ravel(), [1, 3, 0])


def test_mask_any_nonzero_keeps_and_bxtx1_shape():
    mask = np.array([[[0.5], [0.0], [-2.0]]])  # (B, T, 1), float
    _, outputs, _ = rnn(accumulate, col(1, 2, 3), [np.zeros((1, 1))], mask=mask)
    np.testing.assert_array_equal(outputs.ravel(), [1, 1, 4])


@pytest.mark.parametrize("mask", [[[1, 0, 1]], [[True, False, True]], [[0.5, 0.0, -2.0]],
                                  np.array([[3, 0, 1]], np.uint8)])
def test_mask_of_numbers_in_lists_or_any_number_dtype(mask):
    _, outputs, _ = rnn(accumulate, col(1, 2, 3), [np.zeros((1, 1))], mask=mask)
    np.testing.assert_array_equal(outputs.ravel(), [1, 1, 4])


def test_go_backwards_outputs_in_processing_order():
    last, outputs, states = rnn(accumulate, col(1, 2, 3), [np.zeros((1, 1))], go_backwards=True)
    np.testing.assert_array_equal(outputs.ravel(), [3, 5, 6])  # not flipped back
    np.testing.assert_array_equal(last.ravel(), [6])
    identity = lambda x, states: (x, list(states))  # noqa: E731
    _, outputs, _ = rnn(identity, col(1, 2, 3), [np.zeros((1, 1))], go_backwards=True)
    np.testing.assert_array_equal(outputs.ravel(), [3, 2, 1])  # outputs[:, 0] read input time T-1


def test_go_backwards_reverses_mask_with_inputs():
    mask = np.array([[1, 1, 0]])  # the step reading t=2 (processed first) is masked
    _, outputs, states = rnn(accumulate, col(1, 2, 3), [np.full((1, 1), 10.0)], go_backwards=True, mask=mask)
    np.testing.assert_array_equal(outputs.ravel(), [0, 12, 13])
    np.testing.assert_array_equal(states[0].ravel(), [13])


def test_input_length_forwards():
    x = np.tile(col(1, 2, 3, 4), (2, 1, 1))
    _, outputs, states = rnn(accumulate, x, [np.zeros((2, 1))], input_length=np.array([2, 3]))
    np.testing.assert_array_equal(outputs[..., 0], [[1, 3, 3, 3], [1, 3, 6, 6]])
    np.testing.assert_array_equal(states[0].ravel(), [3, 6])
    _, outputs, _ = rnn(
        accumulate, x, [np.zeros((2, 1))], input_length=[2, 3], zero_output_for_mask=True
    )
    np.testing.assert_array_equal(outputs[..., 0], [[1, 3, 0, 0], [1, 3, 6, 0]])


def test_input_length_backwards_uses_T_not_max_length():
    # max(input_length) = 3 < T = 4: valid iff t < input_length[b] in original time (t=3 invalid for all).
    x = np.tile(col(1, 2, 3, 4), (2, 1, 1))
    _, outputs, states = rnn(accumulate, x, [np.zeros((2, 1))], input_length=np.array([2, 3]), go_backwards=True)
    np.testing.assert_array_equal(outputs[..., 0], [[0, 0, 2, 3], [0, 3, 5, 6]])
    np.testing.assert_array_equal(states[0].ravel(), [3, 6])


def test_input_length_zero_and_T():
    x = np.tile(col(1, 2), (2, 1, 1))
    _, outputs, states = rnn(accumulate, x, [np.ones((2, 1))], input_length=np.array([0, 2]))
    np.testing.assert_array_equal(outputs[..., 0], [[0, 0], [2, 4]])
    np.testing.assert_array_equal(states[0].ravel(), [1, 4])


def test_int_input_length_equal_to_T_means_no_mask():
    call = prepare(accumulate, col(1, 2, 3), [np.zeros((1, 1))], input_length=3)
    assert call.step_mask is None
    _, outputs, _ = run_generic(call)
    np.testing.assert_array_equal(outputs.ravel(), [1, 3, 6])
    _, outputs, _ = rnn(accumulate, col(1, 2, 3), [np.zeros((1, 1))], input_length=np.int64(3))
    np.testing.assert_array_equal(outputs.ravel(), [1, 3, 6])


def test_mask_wins_over_input_length():
    x = np.tile(col(1, 2, 3), (2, 1, 1))
    _, outputs, _ = rnn(accumulate, x, [np.zeros((2, 1))], mask=np.ones((2, 3)), input_length=np.array([0, 1]))
    np.testing.assert_array_equal(outputs[..., 0], [[1, 3, 6], [1, 3, 6]])
    _, outputs, _ = rnn(accumulate, x, [np.zeros((2, 1))], mask=np.array([[1, 0, 1], [0, 1, 1]]),
                        input_length=np.array([3, 3]))
    np.testing.assert_array_equal(outputs[..., 0], [[1, 1, 4], [0, 2, 5]])


@pytest.mark.parametrize("steps", [1, 2, 7])
@pytest.mark.parametrize("unroll", [False, True])
def test_step_called_exactly_T_times(steps, unroll):
    step = Counter(accumulate)
    rnn(step, np.ones((2, steps, 1)), [np.zeros((2, 1))], unroll=unroll, mask=np.ones((2, steps)))
    assert step.calls == steps


def test_constants_follow_states_in_a_tuple():
    c1, c2 = np.full((1, 1), 100.0), np.full((1, 1), 1000.0)
    seen = []

    def step(x, states):
        seen.append(states)
        assert isinstance(states, tuple) and len(states) == 3
        h, k1, k2 = states
        assert k1 is c1 and k2 is c2  # constants passed through as given, after the states
        return h + x + k1 + k2, [h + x]

    _, outputs, states = rnn(step, col(1, 2), [np.zeros((1, 1))], constants=[c1, c2])
    np.testing.assert_array_equal(outputs.ravel(), [1101, 1103])
    np.testing.assert_array_equal(states[0].ravel(), [3])
    assert len(seen) == 2


def test_no_constants_means_states_tuple_only():
    def step(x, states):
        assert type(states) is tuple and len(states) == 2
        return x, states

    rnn(step, col(1, 2), (np.zeros((1, 1)), np.zeros((1, 2))))


@pytest.mark.parametrize("time_major", [False, True])
@pytest.mark.parametrize("go_backwards", [False, True])
def test_return_all_outputs_false_gives_time_length_one(time_major, go_backwards):
    x = np.arange(12.0).reshape(2, 3, 2)
    mask = np.array([[1, 0, 1], [1, 1, 0]])
    if time_major:
        x, mask = x.transpose(1, 0, 2).copy(), mask.T.copy()
    kwargs = dict(time_major=time_major, go_backwards=go_backwards, mask=mask)
    full_last, full, full_states = rnn(accumulate, x, [np.zeros((2, 2))], **kwargs)
    last, outputs, states = rnn(accumulate, x, [np.zeros((2, 2))], return_all_outputs=False, **kwargs)
    assert outputs.shape == ((1, 2, 2) if time_major else (2, 1, 2))
    np.testing.assert_array_equal(last, full_last)
    np.testing.assert_array_equal(outputs[0] if time_major else outputs[:, 0], full_last)
    np.testing.assert_array_equal(states[0], full_states[0])


def test_time_major_layout():
    x = np.arange(6.0).reshape(3, 2, 1)  # (T, B, 1)
    mask = np.array([[1, 1], [0, 1], [1, 1]])  # (T, B), not transposed for us
    last, outputs, _ = rnn(accumulate, x, [np.zeros((2, 1))], time_major=True, mask=mask)
    assert outputs.shape == (3, 2, 1)
    np.testing.assert_array_equal(outputs[..., 0], [[0, 1], [0, 4], [4, 9]])
    np.testing.assert_array_equal(last, outputs[-1])


def test_dtypes_outputs_from_step_states_keep_theirs():
    def step(x, states):
        h64, count = states
        h64 = h64 + x.astype(np.float64)
        return h64.astype(np.float16), [h64, count + 1]

    x = np.ones((2, 3, 1), dtype=np.float32)
    initial = [np.zeros((2, 1), np.float64), np.zeros((2,), np.int32)]
    last, outputs, states = rnn(step, x, initial, mask=np.array([[1, 0, 1], [1, 1, 1]]))
    assert outputs.dtype == np.float16 and last.dtype == np.float16
    assert states[0].dtype == np.float64 and states[1].dtype == np.int32
    np.testing.assert_array_equal(states[1], [2, 3])
    np.testing.assert_array_equal(outputs[..., 0], [[1, 1, 2], [1, 2, 3]])


@pytest.mark.parametrize("container", [list, tuple])
@pytest.mark.parametrize("returned", [list, tuple])
def test_state_container_preserved(container, returned):
    def step(x, states):
        h, c = states
        return x, returned([h + x, c])

    initial = container([np.zeros((1, 1)), np.zeros((1, 2))])
    _, _, states = rnn(step, col(1, 2), initial)
    assert type(states) is container
    call = prepare(step, col(1, 2), initial)
    assert type(call.pack_states(call.state_leaves)) is container


def test_single_state_may_be_returned_bare():
    _, outputs, states = rnn(lambda x, s: (s[0] + x, s[0] + x), col(1, 2), [np.zeros((1, 1))])
    assert isinstance(states, list) and len(states) == 1
    np.testing.assert_array_equal(states[0].ravel(), [3])


def test_three_d_states_and_outputs_masked_per_sample():
    def step(x, states):
        (s,) = states
        new = s + x[:, :, None]  # (B, 2, 3)
        return new * 2.0, [new]

    x = np.ones((2, 3, 2))
    mask = np.array([[1, 0, 1], [0, 1, 1]])
    last, outputs, (state,) = rnn(step, x, [np.zeros((2, 2, 3))], mask=mask)
    assert outputs.shape == (2, 3, 2, 3)
    np.testing.assert_array_equal(outputs[:, :, 0, 0], [[2, 2, 4], [0, 2, 4]])
    np.testing.assert_array_equal(state[:, 0, 0], [2, 2])


def test_nested_inputs_states_and_outputs():
    inputs = {"b": np.ones((2, 2, 1)), "a": [np.full((2, 2, 3), 2.0)]}

    def step(x, states):
        assert set(x) == {"a", "b"} and isinstance(x["a"], list)
        assert x["b"].shape == (2, 1) and x["a"][0].shape == (2, 3)
        (pair,) = states
        h, c = pair["h"], pair["c"]
        h = h + x["b"]
        c = c + x["a"][0]
        return {"sum": h + c.sum(axis=1, keepdims=True), "c": c}, [{"h": h, "c": c}]

    initial = [{"h": np.zeros((2, 1)), "c": np.zeros((2, 3))}]
    last, outputs, states = rnn(step, inputs, initial, mask=np.array([[1, 1], [0, 1]]))
    assert set(outputs) == {"sum", "c"} and outputs["c"].shape == (2, 2, 3)
    np.testing.assert_array_equal(outputs["sum"][..., 0], [[7, 14], [0, 7]])
    np.testing.assert_array_equal(last["sum"][:, 0], [14, 7])
    np.testing.assert_array_equal(states[0]["h"].ravel(), [2, 1])
    assert list(states[0]) == ["h", "c"]  # dict rebuilt with its own key order


def test_no_states():
    last, outputs, states = rnn(lambda x, s: (x * 2, []), col(1, 2), [])
    assert states == []
    np.testing.assert_array_equal(outputs.ravel(), [2, 4])


def test_outputs_preallocated_not_aliasing_step_results():
    kept = []

    def step(x, states):
        out = states[0] + x
        kept.append(out)
        return out, [out]

    _, outputs, _ = rnn(step, col(1, 2), [np.zeros((1, 1))])
    outputs[:] = -1
    np.testing.assert_array_equal(kept[0].ravel(), [1])


# ---------------------------------------------------------------------------------------------
# RnnCall: what a fused kernel gets
# ---------------------------------------------------------------------------------------------

def test_rnn_call_fields():
    x = {"k": np.zeros((3, 4, 2))}
    h = np.zeros((3, 5))
    mask = np.array([[1, 0, 1, 1], [0, 0, 1, 1], [1, 1, 1, 0]])[..., None]
    c = np.ones((3, 1))
    call = prepare(accumulate, x, (h,), mask=mask, constants=[c], go_backwards=True, unroll=True)
    assert isinstance(call, RnnCall)
    assert call.batch_size == 3 and call.time_steps == 4 and call.time_major is False
    assert call.input_leaves[0] is x["k"] and optree.tree_unflatten(call.input_treespec, [1]) == {"k": 1}
    assert call.state_leaves == [h] and call.initial_states[0] is h
    assert call.constants == (c,) and isinstance(call.constants, tuple)
    assert call.step_mask.dtype == bool and call.step_mask.shape == (4, 3)
    np.testing.assert_array_equal(call.step_mask, mask[..., 0].T != 0)
    assert call.go_backwards and call.unroll and not call.zero_output_for_mask and call.return_all_outputs
    assert call.xp is np
    assert [call.original_time(i) for i in range(4)] == [3, 2, 1, 0]
    with pytest.raises(AttributeError):
        call.time_steps = 5  # frozen


def test_rnn_call_step_mask_from_input_length_and_time_major():
    call = prepare(accumulate, np.zeros((3, 2, 1)), [np.zeros((2, 1))], input_length=[1, 3], time_major=True)
    np.testing.assert_array_equal(call.step_mask, [[True, True], [False, True], [False, True]])
    call = prepare(accumulate, np.zeros((3, 2, 1)), [np.zeros((2, 1))], time_major=True,
                   mask=np.array([[1, 0], [0, 1], [1, 1]]))
    np.testing.assert_array_equal(call.step_mask, [[True, False], [False, True], [True, True]])
    assert prepare(accumulate, np.zeros((2, 3, 1)), [np.zeros((2, 1))]).step_mask is None
