"""Session state: floatx, epsilon, image_data_format, uids and clear_session (spec: Session state)."""

import gc
import math
import threading

import numpy as np
import pytest
from hypothesis import given, strategies as st

import gpukb
from gpukb import _state


# ---------------------------------------------------------------------------------- defaults

def test_defaults_in_a_fresh_interpreter(tmp_path):
    from helpers import state_in_child

    state, stderr = state_in_child(home=tmp_path)
    assert state == {"floatx": "float32", "epsilon": 1e-07,
                     "image_data_format": "channels_last", "backend": None}
    assert "Warning" not in stderr


# ---------------------------------------------------------------------------------- floatx

@pytest.mark.parametrize("value, stored", [
    ("float16", "float16"), ("float32", "float32"), ("float64", "float64"),
    (np.float16, "float16"), (np.float32, "float32"), (np.float64, "float64"),
    (np.dtype("float32"), "float32"), (np.dtype("float64"), "float64"), (float, "float64"),
])
def test_set_floatx_accepts_names_dtypes_and_types(restore_settings, value, stored):
    gpukb.set_floatx(value)
    assert gpukb.floatx() == stored
    assert type(gpukb.floatx()) is str


@pytest.mark.parametrize("value", ["float8", "Float32", "int32", "f4", "", None, 32, 1.5,
                                   np.int32, np.dtype("int64"), bool, np.bool_, "bfloat16", object()])
def test_set_floatx_rejects_with_the_accepted_list(restore_settings, value):
    before = gpukb.floatx()
    with pytest.raises(ValueError, match=r"expected one of 'float16', 'float32', 'float64'"):
        gpukb.set_floatx(value)
    assert gpukb.floatx() == before


@given(st.text(max_size=12))
def test_floatx_validator_accepts_exactly_the_three_names(text):
    if text in ("float16", "float32", "float64"):
        assert _state.standardize_floatx(text) == text
    else:
        with pytest.raises(ValueError, match=r"Unknown floatx"):
            _state.standardize_floatx(text)


# ---------------------------------------------------------------------------------- epsilon

def test_epsilon_default_and_set(restore_settings):
    assert gpukb.epsilon() == 1e-07
    gpukb.set_epsilon(1e-5)
    assert gpukb.epsilon() == 1e-5
    gpukb.set_epsilon(2)
    assert gpukb.epsilon() == 2.0 and type(gpukb.epsilon()) is float
    gpukb.set_epsilon(np.float32(0.5))
    assert gpukb.epsilon() == 0.5 and type(gpukb.epsilon()) is float


@pytest.mark.parametrize("value", [0, 0.0, -1e-7, math.inf, -math.inf, math.nan, "1e-7", None,
                                   True, False, 1j, [1e-7], np.array([1e-7])])
def test_set_epsilon_rejects_non_positive_non_finite_non_real(restore_settings, value):
    with pytest.raises(ValueError, match="positive finite real number"):
        gpukb.set_epsilon(value)
    assert gpukb.epsilon() == 1e-07


@given(st.floats(allow_nan=True, allow_infinity=True))
def test_epsilon_validator_on_any_float(value):
    if math.isfinite(value) and value > 0:
        assert _state.standardize_epsilon(value) == value
    else:
        with pytest.raises(ValueError):
            _state.standardize_epsilon(value)


# ---------------------------------------------------------------------------------- image_data_format

@pytest.mark.parametrize("value, stored", [
    ("channels_last", "channels_last"), ("channels_first", "channels_first"),
    ("CHANNELS_FIRST", "channels_first"), ("Channels_Last", "channels_last"),
])
def test_set_image_data_format_case_insensitive(restore_settings, value, stored):
    gpukb.set_image_data_format(value)
    assert gpukb.image_data_format() == stored


@pytest.mark.parametrize("value", ["channels_middle", "NHWC", "", " channels_last", None, 1])
def test_set_image_data_format_rejects(restore_settings, value):
    with pytest.raises(ValueError, match=r"expected one of 'channels_last', 'channels_first'"):
        gpukb.set_image_data_format(value)
    assert gpukb.image_data_format() == "channels_last"


@given(st.text(max_size=16))
def test_image_data_format_validator(text):
    if text.lower() in ("channels_last", "channels_first"):
        assert _state.standardize_image_data_format(text) == text.lower()
    else:
        with pytest.raises(ValueError):
            _state.standardize_image_data_format(text)


# ---------------------------------------------------------------------------------- uids

def test_get_uid_counts_per_prefix_from_one():
    gpukb.reset_uids()
    assert [gpukb.get_uid("a"), gpukb.get_uid("a"), gpukb.get_uid("b"), gpukb.get_uid("a")] == [1, 2, 1, 3]
    assert gpukb.get_uid() == 1 and gpukb.get_uid("") == 2


def test_get_uid_rejects_non_str_prefix():
    with pytest.raises(TypeError, match="prefix must be a str"):
        gpukb.get_uid(3)


def test_get_uid_is_per_thread():
    gpukb.reset_uids()
    gpukb.get_uid("x")
    gpukb.get_uid("x")
    seen = {}

    def worker(name):
        seen[name] = [gpukb.get_uid("x") for _ in range(3)]

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(values == [1, 2, 3] for values in seen.values())
    assert gpukb.get_uid("x") == 3  # the main thread's counter is its own


def test_reset_uids_resets_every_thread():
    started, go_on, results = threading.Event(), threading.Event(), []

    def worker():
        gpukb.get_uid("y")
        gpukb.get_uid("y")
        started.set()
        go_on.wait(10)
        results.append(gpukb.get_uid("y"))

    thread = threading.Thread(target=worker)
    thread.start()
    started.wait(10)
    gpukb.get_uid("y")
    gpukb.reset_uids()
    go_on.set()
    thread.join()
    assert results == [1]
    assert gpukb.get_uid("y") == 1


# ---------------------------------------------------------------------------------- clear_session

def test_clear_session_resets_uids_keeps_settings_calls_hooks_and_collects(restore_settings, monkeypatch):
    gpukb.set_floatx("float64")
    gpukb.set_epsilon(1e-3)
    gpukb.set_image_data_format("channels_first")
    gpukb.get_uid("z")
    calls = []
    hook = _state.register_clear_session_hook(lambda: calls.append("hook"))
    monkeypatch.setattr(gc, "collect", lambda *a: calls.append("gc") or 0)
    try:
        gpukb.clear_session()
    finally:
        _state.unregister_clear_session_hook(hook)
    assert calls == ["hook", "gc"]
    assert gpukb.get_uid("z") == 1
    assert (gpukb.floatx(), gpukb.epsilon(), gpukb.image_data_format()) == ("float64", 1e-3, "channels_first")


def test_clear_session_without_free_memory_skips_hooks_and_gc(monkeypatch):
    gpukb.get_uid("w")
    calls = []
    hook = _state.register_clear_session_hook(lambda: calls.append("hook"))
    monkeypatch.setattr(gc, "collect", lambda *a: calls.append("gc") or 0)
    try:
        gpukb.clear_session(free_memory=False)
    finally:
        _state.unregister_clear_session_hook(hook)
    assert calls == []
    assert gpukb.get_uid("w") == 1


def test_clear_session_resets_other_threads_uids():
    ready, go_on, results = threading.Event(), threading.Event(), []

    def worker():
        gpukb.get_uid("t")
        ready.set()
        go_on.wait(10)
        results.append(gpukb.get_uid("t"))

    thread = threading.Thread(target=worker)
    thread.start()
    ready.wait(10)
    gpukb.clear_session(free_memory=False)
    go_on.set()
    thread.join()
    assert results == [1]


def test_register_clear_session_hook_rejects_non_callables():
    with pytest.raises(TypeError, match="expected a callable"):
        _state.register_clear_session_hook(42)


def test_set_epsilon_too_large_for_a_float_is_the_documented_value_error(restore_settings):
    for value in (10**400, -(10**400), 10**5000):  # float() overflows; the last is past repr's digit limit
        with pytest.raises(ValueError, match="Invalid epsilon .*positive finite real number"):
            gpukb.set_epsilon(value)
    assert gpukb.epsilon() == 1e-07


def test_clear_session_collects_only_when_a_hook_released_something(monkeypatch):
    """A full gc.collect() takes tens of ms in a large process: skipped when nothing was freed."""
    collections = []
    monkeypatch.setattr(gc, "collect", lambda *a: collections.append(a) or 0)
    for reports, expected in (([False, False], 0), ([False, True], 1), ([False, None], 1)):
        monkeypatch.setattr(_state, "_clear_session_hooks", [lambda r=r: r for r in reports])
        collections.clear()
        gpukb.get_uid("g")
        gpukb.clear_session()
        assert len(collections) == expected, reports
        assert gpukb.get_uid("g") == 1  # the uids are reset either way


def test_clear_session_with_no_backend_loaded_does_not_collect(tmp_path):
    from helpers import run_python

    code = ("import gc, gpukb\n"
            "calls = []\n"
            "gc.collect = lambda *a: calls.append(a) or 0\n"
            "gpukb.get_uid('u'); gpukb.clear_session()\n"
            "print(len(calls), gpukb.get_uid('u'))")
    result = run_python(code, home=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["0", "1"]
