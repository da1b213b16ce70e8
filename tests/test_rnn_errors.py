"""Every error of the rnn spec: type, message (argument and shapes named), raised before any step."""

import re
import sys

import numpy as np
import pytest

import gpukb
from gpukb._rnn import prepare, run_generic


class OtherLibraryArray(np.ndarray):
    """Stands in for an array of another library: its type lives outside the numpy package."""


def other(a):
    return np.asarray(a).view(OtherLibraryArray)


class Counter:
    def __init__(self, fn=None):
        self.fn = fn or (lambda x, states: (states[0] + x, [states[0] + x]))
        self.calls = 0

    def __call__(self, x, states):
        self.calls += 1
        return self.fn(x, states)


def rnn(step, inputs, initial_states, **kwargs):
    return run_generic(prepare(step, inputs, initial_states, xp=np, **kwargs))


def x_(b=2, t=3, f=1):
    return np.ones((b, t, f))


def h_(b=2, f=1):
    return np.zeros((b, f))


# Errors detectable up front: (exception, message regex, arguments); the step must never run.
UP_FRONT = {
    "rank2_input": (ValueError, r"inputs must have rank >= 3 \(B, T, \.\.\.\), got shape \(2, 3\)",
                    dict(inputs=np.ones((2, 3)))),
    "rank2_nested_leaf": (ValueError, r"inputs\['b'\] must have rank >= 3.*got shape \(2,\)",
                          dict(inputs={"a": x_(), "b": np.ones(2)})),
    "rank2_time_major": (ValueError, r"rank >= 3 \(T, B, \.\.\.\)",
                         dict(inputs=np.ones((3, 2)), time_major=True)),
    "zero_steps": (ValueError, r"at least one time step, got T=0 \(inputs has shape \(2, 0, 1\)\)",
                   dict(inputs=np.ones((2, 0, 1)))),
    "batch_mismatch": (ValueError, r"share batch size.*inputs\[0\] has shape \(2, 3, 1\) \(B=2, T=3\) but "
                                   r"inputs\[1\] has shape \(4, 3, 1\) \(B=4, T=3\)",
                       dict(inputs=[x_(), x_(b=4)])),
    "time_mismatch": (ValueError, r"inputs\['a'\] has shape \(2, 3, 1\).*inputs\['b'\] has shape \(2, 5, 1\)",
                      dict(inputs={"b": x_(t=5), "a": x_()})),
    "time_major_mismatch": (ValueError, r"time_major=True",
                            dict(inputs=[np.ones((3, 2, 1)), np.ones((3, 4, 1))], time_major=True)),
    "no_input_arrays": (ValueError, r"inputs holds no arrays", dict(inputs=[])),
    "input_not_array": (TypeError, r"inputs\[1\] must be an array, got str", dict(inputs=[x_(), "x"])),
    "mask_wrong_T": (ValueError, r"mask shape \(2, 4\) does not fit the inputs \(B=2, T=3\): expected "
                                 r"\(2, 3\) or \(2, 3, 1\)",
                     dict(mask=np.ones((2, 4)))),
    "mask_wrong_last_axis": (ValueError, r"mask shape \(2, 3, 2\)", dict(mask=np.ones((2, 3, 2)))),
    "mask_rank1": (ValueError, r"mask shape \(2,\)", dict(mask=np.ones(2))),
    "mask_not_transposed_for_time_major": (
        ValueError, r"mask shape \(2, 3\) does not fit.*\(3, 2\) or \(3, 2, 1\).*time_major=True",
        dict(inputs=np.ones((3, 2, 1)), mask=np.ones((2, 3)), time_major=True)),
    "states_array": (TypeError, r"initial_states must be a list or tuple of states, got ndarray",
                     dict(initial_states=h_())),
    "states_dict": (TypeError, r"initial_states must be a list or tuple.*got dict",
                    dict(initial_states={"h": h_()})),
    "states_none": (TypeError, r"initial_states must be a list or tuple.*got NoneType", dict(initial_states=None)),
    "state_not_array": (TypeError, r"initial_states\[0\] must be an array, got float", dict(initial_states=[0.0])),
    "constants_array": (TypeError, r"constants must be a list or tuple \(or None\), got ndarray",
                        dict(constants=np.ones((2, 1)))),
    "step_not_callable": (TypeError, r"step_function must be callable", dict(step="not callable")),
    "flag_not_bool": (TypeError, r"go_backwards must be a bool, got str", dict(go_backwards="yes")),
    "flag_not_bool_2": (TypeError, r"return_all_outputs must be a bool", dict(return_all_outputs=None)),
    "int_input_length_not_T": (ValueError, r"int input_length=2 must equal the time length T=3",
                               dict(input_length=2)),
    "input_length_wrong_len": (ValueError, r"input_length.*shape \(B,\)=\(2,\), got shape \(3,\)",
                               dict(input_length=np.array([1, 2, 3]))),
    "input_length_2d": (ValueError, r"input_length.*got shape \(2, 1\)", dict(input_length=np.ones((2, 1), int))),
    "input_length_negative": (ValueError, r"input_length values must be >= 0, got a length of -1",
                              dict(input_length=np.array([2, -1]))),
    "input_length_float": (TypeError, r"input_length must hold integers, got dtype float64",
                           dict(input_length=np.array([2.0, 1.0]))),
    "input_length_float_scalar": (TypeError, r"input_length must be an int or a 1-D integer array",
                                  dict(input_length=3.0)),
    "input_length_bool": (TypeError, r"input_length must be an int.*True", dict(input_length=True)),
    "input_length_bool_array": (TypeError, r"input_length must hold integers, got dtype bool",
                                dict(input_length=np.array([True, False]))),
    "input_length_whole_float_0d": (TypeError, r"input_length must hold integers, got dtype float64",
                                    dict(input_length=np.float64(3.0))),
    "input_length_float_no_samples": (TypeError, r"input_length must hold integers, got dtype float64",
                                      dict(inputs=x_(b=0), initial_states=[h_(b=0)],
                                           input_length=np.zeros(0))),
    "input_length_above_T": (ValueError, r"input_length values must be <= the time length T=3 of the "
                                         r"inputs, got a length of 5",
                             dict(input_length=np.array([5, 4]))),
    "input_length_list_above_T": (ValueError, r"input_length values must be <= .*T=3.*length of 4",
                                  dict(input_length=[1, 4])),
    "mask_strings": (TypeError, r"mask must be a boolean, integer or floating array \(or nested lists of "
                                r"numbers\), got dtype <U1",
                     dict(mask=np.array([["0", "1", "1"], ["1", "0", "0"]]))),
    "mask_string_lists": (TypeError, r"mask must be a boolean, integer or floating.*got dtype <U1",
                          dict(mask=[["0", "1", "1"], ["1", "0", "0"]])),
    "mask_object_with_none": (TypeError, r"mask must be a boolean, integer or floating.*got dtype object",
                              dict(mask=np.array([[1, None, 1], [1, 1, 1]], dtype=object))),
    "mask_complex": (TypeError, r"mask must be.*got dtype complex128", dict(mask=np.ones((2, 3), complex))),
    "bad_input_length_even_with_mask": (ValueError, r"int input_length=7",
                                        dict(input_length=7, mask=np.ones((2, 3)))),
    "masked_state_without_batch": (ValueError, r"initial_states\[1\] has shape \(5,\)",
                                   dict(initial_states=[h_(), np.zeros(5)], mask=np.ones((2, 3)))),
    "mixed_input_leaves": (TypeError, r"different libraries.*inputs\[0\] is numpy\.ndarray but inputs\[1\] is "
                                      r".*OtherLibraryArray",
                           dict(inputs=[x_(), other(x_())])),
    "mixed_state": (TypeError, r"different libraries.*initial_states\[0\]", dict(initial_states=[other(h_())])),
    "mixed_mask": (TypeError, r"different libraries.*but mask is", dict(mask=other(np.ones((2, 3))))),
    "mixed_constant": (TypeError, r"different libraries.*constants\[0\]\['c'\]",
                       dict(constants=[{"c": other(h_())}])),
    "mixed_input_length": (TypeError, r"different libraries.*input_length",
                           dict(input_length=other(np.array([1, 2])))),
}


@pytest.mark.parametrize("case", sorted(UP_FRONT))
def test_up_front_errors_raise_before_any_step(case):
    error, pattern, overrides = UP_FRONT[case]
    step = Counter()
    kwargs = dict(inputs=x_(), initial_states=[h_()])
    kwargs.update(overrides)
    step_arg = kwargs.pop("step", step)
    with pytest.raises(error, match=pattern) as raised:
        rnn(step_arg, **kwargs)
    assert step.calls == 0
    assert_no_doubled_words(str(raised.value))


def assert_no_doubled_words(message):
    doubled = re.search(r"\b([A-Za-z_]\w*) \1\b", message)
    assert doubled is None, f"doubled word {doubled.group(0)!r} in: {message}"


def test_python_scalars_in_constants_are_not_another_library():
    step = Counter(lambda x, states: (x * states[1], [states[0]]))
    _, outputs, _ = rnn(step, x_(), [h_()], constants=[2.0])
    np.testing.assert_array_equal(outputs, 2 * x_())


# Errors only visible on a step's result: the message names the state's index.

def test_step_returns_fewer_states():
    step = Counter(lambda x, states: (x, [states[0]]))
    with pytest.raises(ValueError, match=r"returned 1 new state\(s\) but initial_states has 2"):
        rnn(step, x_(), [h_(), h_()])
    assert step.calls == 1


def test_step_returns_more_states():
    with pytest.raises(ValueError, match=r"returned 2 new state\(s\) but initial_states has 1"):
        rnn(lambda x, s: (x, [s[0], s[0]]), x_(), [h_()])


def test_step_returns_states_with_another_structure():
    with pytest.raises(ValueError, match=r"new state 1 with structure .* but initial_states\[1\] has structure"):
        rnn(lambda x, s: (x, [s[0], {"h": s[1]["h"], "extra": s[1]["h"]}]), x_(), [h_(), {"h": h_()}])
    with pytest.raises(ValueError, match=r"new state 0 with structure"):
        rnn(lambda x, s: (x, [{"g": s[0]["h"]}]), x_(), [{"h": h_()}])


def test_step_changes_state_shape():
    with pytest.raises(ValueError, match=r"shape of state initial_states\[1\]: initial shape \(2, 1\), "
                                         r"returned \(2, 4\)"):
        rnn(lambda x, s: (x, [s[0], np.zeros((2, 4))]), x_(), [h_(), h_()])


def test_step_changes_nested_state_dtype():
    with pytest.raises(ValueError, match=r"dtype of state initial_states\[0\]\['c'\]: initial dtype float64, "
                                         r"returned float32"):
        rnn(lambda x, s: (x, [{"c": s[0]["c"].astype(np.float32)}]), x_(), [{"c": h_()}])


def test_step_changes_state_dtype_later():
    calls = []

    def step(x, states):
        calls.append(1)
        h = states[0] if len(calls) < 3 else states[0].astype(np.float32)
        return x, [h]

    with pytest.raises(ValueError, match=r"dtype of state initial_states\[0\]"):
        rnn(step, x_(t=4), [h_()])
    assert len(calls) == 3


def test_step_returns_non_array_state():
    with pytest.raises(ValueError, match=r"non-array float for state initial_states\[0\]"):
        rnn(lambda x, s: (x, [1.0]), x_(), [h_()])


def test_step_must_return_a_pair():
    with pytest.raises(TypeError, match=r"must return a pair \(output, new_states\), got tuple of length 3"):
        rnn(lambda x, s: (x, s, s), x_(), [h_()])
    with pytest.raises(TypeError, match=r"must return a pair.*got ndarray"):
        rnn(lambda x, s: x, x_(), [h_()])


def test_step_output_needs_batch_axis():
    with pytest.raises(ValueError, match=r"^rnn: step_function's output\[1\] must have the batch size B=2 .*got "
                                         r"shape \(\)"):
        rnn(lambda x, s: ((x, np.float64(1.0).reshape(())), list(s)), x_(), [h_()])
    with pytest.raises(ValueError, match=r"^rnn: step_function's output must have the batch size B=2.*got "
                                         r"shape \(3, 1\)"):
        rnn(lambda x, s: (np.zeros((3, 1)), list(s)), x_(), [h_()])


def test_step_output_changes_between_steps():
    calls = []

    def step(x, states):
        calls.append(1)
        return (x if len(calls) == 1 else np.zeros((2, 5))), list(states)

    with pytest.raises(ValueError, match=r"^rnn: step_function's output changed from shape/dtype \(\(2, 1\), "):
        rnn(step, x_(), [h_()])

    def restructure(x, states):
        calls.append(1)
        return ([x] if len(calls) % 2 else {"a": x}), list(states)

    with pytest.raises(ValueError, match=r"returned an output with structure"):
        rnn(restructure, x_(), [h_()])


def test_step_result_errors_have_no_doubled_words():
    bad_results = [
        lambda x, s: ((x, np.float64(1.0).reshape(())), list(s)),  # output[1] without a batch axis
        lambda x, s: (np.zeros((3, 1)), list(s)),  # output without the batch size
        lambda x, s: (x, [1.0]),
        lambda x, s: (x, [s[0].astype(np.float32)]),
        lambda x, s: (x, [np.zeros((2, 4))]),
    ]
    for step in bad_results:
        with pytest.raises(ValueError) as raised:
            rnn(step, x_(), [h_()])
        assert_no_doubled_words(str(raised.value))


# Per-sample lengths on a GPU: one read-back checks both bounds.

class FakeGpuArray:
    """Stands in for a GPU array (not a NumPy array): reductions and comparisons stay "on the
    device"; each read of its values on the host, which waits for the GPU, is counted."""

    reads = 0

    def __init__(self, data):
        self.data = np.asarray(data)

    shape = property(lambda self: self.data.shape)
    dtype = property(lambda self: self.data.dtype)
    ndim = property(lambda self: self.data.ndim)

    def min(self):
        return FakeGpuArray(self.data.min())

    def max(self):
        return FakeGpuArray(self.data.max())

    def reshape(self, shape):
        return FakeGpuArray(self.data.reshape(shape))

    def __lt__(self, other):
        return FakeGpuArray(self.data < other.data)

    def __setitem__(self, key, value):
        self.data[key] = value.data if isinstance(value, FakeGpuArray) else value

    def _read(self):
        FakeGpuArray.reads += 1
        return self.data

    def tolist(self):
        return self._read().tolist()

    def __int__(self):
        return int(self._read())

    __index__ = __int__

    def __bool__(self):
        return bool(self._read())


class FakeGpu:
    """The namespace of FakeGpuArray."""

    def asarray(self, value, dtype=None):
        return value if isinstance(value, FakeGpuArray) else FakeGpuArray(np.asarray(value, dtype=dtype))

    def empty(self, shape, dtype=None):
        return FakeGpuArray(np.empty(shape, dtype=dtype))

    def zeros(self, shape, dtype=None):
        return FakeGpuArray(np.zeros(shape, dtype=dtype))


@pytest.mark.parametrize("lengths, error", [
    ([2, 3], None),
    ([2, 5], r"input_length values must be <= the time length T=3 of the inputs, got a length of 5"),
    ([-1, 2], r"input_length values must be >= 0, got a length of -1"),
])
def test_device_lengths_are_checked_with_one_read_back(lengths, error):
    step = Counter()
    x, h = FakeGpuArray(x_()), FakeGpuArray(h_())
    FakeGpuArray.reads = 0
    if error is None:
        call = prepare(step, x, [h], input_length=FakeGpuArray(lengths), xp=FakeGpu())
        np.testing.assert_array_equal(call.step_mask.data, np.arange(3)[:, None] < np.array(lengths))
    else:
        with pytest.raises(ValueError, match=error):
            prepare(step, x, [h], input_length=FakeGpuArray(lengths), xp=FakeGpu())
    assert FakeGpuArray.reads == 1
    assert step.calls == 0


# An exception raised by the step function itself: the same object, with a note saying where.

class StepFailure(Exception):
    pass


def fails_at_call(number, error):
    def step(x, states):
        step.calls += 1
        if step.calls == number:
            raise error
        return x, list(states)

    step.calls = 0
    return step


needs_notes = pytest.mark.skipif(sys.version_info < (3, 11), reason="exception notes (PEP 678): Python >= 3.11")


@needs_notes
@pytest.mark.parametrize("go_backwards, i, t", [(False, 1, 1), (True, 1, 2)])
def test_step_exception_gets_a_note_naming_step_and_backend(go_backwards, i, t):
    error = StepFailure("boom")
    with pytest.raises(StepFailure) as raised:
        gpukb.rnn(fails_at_call(2, error), x_(t=4), [h_()], go_backwards=go_backwards)
    assert raised.value is error
    assert raised.traceback[-1].name == "step"  # raised where the step raised it
    backwards = ", go_backwards" if go_backwards else ""
    assert error.__notes__ == [
        f"gpukb.rnn: raised by step_function at processing step i={i} of T=4 (input time index t={t}"
        f"{backwards}) on backend 'cpu'."
    ]


@needs_notes
def test_step_exception_passing_two_loops_gets_one_note():
    error = StepFailure("inner")

    def outer(x, states):
        gpukb.rnn(fails_at_call(3, error), x_(t=5), [h_()])
        return x, list(states)

    with pytest.raises(StepFailure) as raised:
        gpukb.rnn(outer, x_(t=2), [h_()])
    assert raised.value is error
    assert len(error.__notes__) == 1 and "i=2 of T=5" in error.__notes__[0]


def test_no_note_on_gpukbs_own_errors_or_on_keyboard_interrupt():
    with pytest.raises(ValueError, match="changed the shape") as raised:
        gpukb.rnn(lambda x, s: (x, [np.zeros((2, 4))]), x_(), [h_()])
    assert not hasattr(raised.value, "__notes__")
    interrupt = KeyboardInterrupt()
    with pytest.raises(KeyboardInterrupt) as raised:
        gpukb.rnn(fails_at_call(1, interrupt), x_(), [h_()])
    assert raised.value is interrupt and not hasattr(interrupt, "__notes__")


class PreNotesError(Exception):
    """An exception as Python 3.10 has them: no ``add_note``."""

    def __getattribute__(self, name):
        if name == "add_note":
            raise AttributeError(name)
        return super().__getattribute__(name)


def test_exception_without_add_note_passes_unchanged():
    error = PreNotesError("old")
    with pytest.raises(PreNotesError) as raised:
        rnn(fails_at_call(1, error), x_(), [h_()])
    assert raised.value is error and not hasattr(error, "__notes__")


# A state changing dtype because of integer inputs or constants: the message names them.

def test_integer_input_named_when_a_state_changes_dtype():
    h32 = np.zeros((2, 1), np.float32)
    with pytest.raises(ValueError, match=r"dtype of state initial_states\[0\]: initial dtype float32, returned "
                                         r"float64\. The likely cause: inputs has dtype int64; cast integer and "
                                         r"bool inputs and constants to float32 before calling rnn\."):
        rnn(lambda x, s: (x, [s[0] + x]), np.ones((2, 3, 1), np.int64), [h32])
    with pytest.raises(ValueError, match=r"The likely cause: constants\[0\]\['scale'\] has dtype int32; "):
        rnn(lambda x, s: (x, [s[0] * s[1]["scale"]]), np.ones((2, 3, 1), np.float32), [h32],
            constants=[{"scale": np.ones((2, 1), np.int32)}])
    with pytest.raises(ValueError, match=r"returned float64\.$"):  # floating inputs: no such hint
        rnn(lambda x, s: (x, [s[0] + x]), np.ones((2, 3, 1)), [h32])
