"""placeholder, KerasTensor and is_keras_tensor (spec: Session state)."""

import numpy as np
import pytest
from hypothesis import given, strategies as st

import gpukb


def test_placeholder_from_shape():
    gpukb.reset_uids()
    x = gpukb.placeholder(shape=(None, 3, 4))
    assert isinstance(x, gpukb.KerasTensor)
    assert x.shape == (None, 3, 4) and x.ndim == 3
    assert x.dtype == "float32" and x.sparse is False and x.ragged is False
    assert x.name == "placeholder_1"
    assert gpukb.placeholder(ndim=1).name == "placeholder_2"


def test_placeholder_from_ndim():
    assert gpukb.placeholder(ndim=3).shape == (None, None, None)
    assert gpukb.placeholder(ndim=0).shape == ()


def test_placeholder_dtype_defaults_to_floatx_at_call_time(restore_settings):
    gpukb.set_floatx("float64")
    assert gpukb.placeholder(ndim=2).dtype == "float64"
    gpukb.set_floatx("float16")
    assert gpukb.placeholder(ndim=2).dtype == "float16"
    assert gpukb.placeholder(ndim=2, dtype="int32").dtype == "int32"
    assert gpukb.placeholder(ndim=2, dtype=np.bool_).dtype == "bool"


def test_placeholder_name_and_flags():
    x = gpukb.placeholder(shape=[2], name="inp", sparse=True)
    assert x.name == "inp" and x.sparse and not x.ragged and x.shape == (2,)
    assert gpukb.placeholder(ndim=2, ragged=True).ragged


def test_placeholder_names_are_unique_per_thread_and_reset_by_clear_session():
    gpukb.clear_session(free_memory=False)
    names = [gpukb.placeholder(ndim=1).name for _ in range(3)]
    assert names == ["placeholder_1", "placeholder_2", "placeholder_3"]
    gpukb.clear_session(free_memory=False)
    assert gpukb.placeholder(ndim=1).name == "placeholder_1"


def test_repr_is_readable():
    text = repr(gpukb.placeholder(shape=(None, 5), name="seq"))
    assert text == "<KerasTensor name='seq', shape=(None, 5), dtype=float32, sparse=False, ragged=False>"


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(), ValueError, "needs `shape` or `ndim`"),
    (dict(shape=(2, 3), sparse=True, ragged=True), ValueError, "both sparse and ragged"),
    (dict(shape=(2, 3), ndim=3), ValueError, r"rank 2.*ndim=3"),
    (dict(shape=(2, -1)), ValueError, r"shape\[1\] must be >= 0"),
    (dict(shape=(2, 1.5)), TypeError, r"shape\[1\] must be an int or None"),
    (dict(shape=(True,)), TypeError, r"shape\[0\] must be an int or None"),
    (dict(shape="abc"), TypeError, "shape must be a tuple or list"),
    (dict(shape=5), TypeError, "shape must be a tuple or list"),
    (dict(ndim=-1), ValueError, "ndim must be >= 0"),
    (dict(ndim=2.0), TypeError, "ndim must be an int"),
    (dict(ndim=2, dtype="not_a_dtype"), ValueError, "Invalid dtype"),
    (dict(ndim=2, name=3), TypeError, "name must be a str"),
    (dict(ndim=2, sparse="yes"), TypeError, "sparse must be a bool"),
])
def test_placeholder_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        gpukb.placeholder(**kwargs)


def test_keras_tensor_holds_no_data():
    x = gpukb.placeholder(ndim=2)
    with pytest.raises(TypeError, match="symbolic"):
        np.asarray(x)
    with pytest.raises(TypeError, match="symbolic"):
        bool(x)
    with pytest.raises(AttributeError):
        x.shape = (1, 2)


@pytest.mark.parametrize("value", [np.zeros(3), 1.0, None, "placeholder", [gpukb.placeholder(ndim=1)], object()])
def test_is_keras_tensor_false_for_everything_else(value):
    assert gpukb.is_keras_tensor(value) is False


def test_is_keras_tensor_true():
    assert gpukb.is_keras_tensor(gpukb.placeholder(ndim=1)) is True
    assert gpukb.is_keras_tensor(gpukb.KerasTensor((1, 2))) is True


@given(st.lists(st.one_of(st.none(), st.integers(0, 10_000)), max_size=6))
def test_placeholder_shape_round_trip(shape):
    x = gpukb.placeholder(shape=shape)
    assert x.shape == tuple(shape) and x.ndim == len(shape)


@given(st.lists(st.integers(-10, 10), min_size=1, max_size=4))
def test_negative_sizes_always_rejected(shape):
    if min(shape) < 0:
        with pytest.raises(ValueError):
            gpukb.placeholder(shape=shape)
    else:
        assert gpukb.placeholder(shape=shape).shape == tuple(shape)
