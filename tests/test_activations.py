"""gpukb.activations: names, errors, and each function against a float64 formula; the kernels'
one table of activations (gpukb.kernels.cells.activations) on the CPU and the CUDA simulator."""

import math
import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from gpukb import activations

NAMES = ("tanh", "sigmoid", "hard_sigmoid", "relu", "linear", "hard_sigmoid_keras3")


def reference(name, x):
    """float64 formulas, written independently of gpukb (tf.keras 2 definitions)."""
    x = np.asarray(x, dtype=np.float64)
    if name == "tanh":
        return np.tanh(x)
    if name == "sigmoid":
        return np.array([1.0 / (1.0 + math.exp(-v)) if v > -700 else 0.0 for v in x.ravel()]
                        ).reshape(x.shape)
    if name == "hard_sigmoid":
        return np.minimum(1.0, np.maximum(0.0, 0.2 * x + 0.5))
    if name == "relu":
        return np.where(x > 0, x, 0.0)
    if name == "hard_sigmoid_keras3":  # Keras 3: relu6(x + 3) / 6
        return np.minimum(np.maximum(x + 3.0, 0.0), 6.0) / 6.0
    return x


def test_supported_names_in_fixed_order():
    assert activations.SUPPORTED == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_standardize_accepts_every_supported_name(name):
    assert activations.standardize(name) == name


def test_none_means_linear():
    assert activations.standardize(None) == "linear"
    x = np.array([-2.0, 3.0], np.float32)
    np.testing.assert_array_equal(activations.get(None, np)(x), x)


@pytest.mark.parametrize("bad", ["Tanh", "softmax", "hard_silu", "", "relu6"])
def test_unknown_name_lists_supported(bad):
    with pytest.raises(ValueError) as info:
        activations.standardize(bad)
    message = str(info.value)
    assert repr(bad) in message
    assert "'tanh', 'sigmoid', 'hard_sigmoid', 'relu', 'linear'" in message
    with pytest.raises(ValueError):
        activations.get(bad, np)


@pytest.mark.parametrize("bad", [np.tanh, lambda x: x, 3, b"tanh", ["tanh"]])
def test_non_string_is_type_error(bad):
    with pytest.raises(TypeError) as info:
        activations.standardize(bad)
    assert "'tanh', 'sigmoid', 'hard_sigmoid', 'relu', 'linear'" in str(info.value)


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
@pytest.mark.parametrize("name", NAMES)
def test_matches_float64_formula_and_keeps_dtype(name, dtype):
    x = np.linspace(-12, 12, 241).astype(dtype)
    got = activations.get(name, np)(x)
    assert got.dtype == np.dtype(dtype)
    assert got.shape == x.shape
    tol = {"float16": 2e-3, "float32": 2e-7, "float64": 1e-15}[dtype]
    np.testing.assert_allclose(got.astype(np.float64), reference(name, x), rtol=tol * 4,
                               atol=tol)


@given(
    name=st.sampled_from(NAMES),
    x=hnp.arrays(np.float32, hnp.array_shapes(min_dims=1, max_dims=3, max_side=5),
                 elements=st.floats(-100, 100, width=32)),
)
def test_matches_formula_any_shape(name, x):
    got = activations.get(name, np)(x)
    assert got.dtype == np.float32 and got.shape == x.shape
    np.testing.assert_allclose(got, reference(name, x), rtol=1e-6, atol=1e-7)


def test_hard_sigmoid_is_tf_keras_2_not_keras_3():
    # tf.keras 2: clip(0.2 x + 0.5, 0, 1) (tf_keras/src/backend.py; the docstring example).
    # Keras 3 uses relu6(x + 3) / 6, which gives 2/3 at x = 1 and saturates at +-3.
    hs = activations.get("hard_sigmoid", np)
    x = np.array([-3.0, -2.5, -1.0, 0.0, 1.0, 2.5, 3.0], np.float32)
    np.testing.assert_allclose(hs(x), [0.0, 0.0, 0.3, 0.5, 0.7, 1.0, 1.0], rtol=1e-6, atol=1e-7)
    slope = (hs(np.float32([0.01])) - hs(np.float32([-0.01]))) / 0.02
    np.testing.assert_allclose(slope, 0.2, rtol=1e-4)


def test_hard_sigmoid_keras3_is_relu6_of_x_plus_3_over_6():
    hs = activations.get("hard_sigmoid_keras3", np)
    x = np.array([-4.0, -3.0, -1.5, 0.0, 1.0, 3.0, 4.0], np.float32)
    np.testing.assert_allclose(hs(x), [0.0, 0.0, 0.25, 0.5, 2.0 / 3.0, 1.0, 1.0], rtol=1e-6)
    assert hs(x).dtype == np.float32


def test_relu_and_linear():
    x = np.array([-1.5, -0.0, 0.0, 2.0], np.float64)
    np.testing.assert_array_equal(activations.get("relu", np)(x), [0.0, 0.0, 0.0, 2.0])
    assert activations.get("linear", np)(x) is x


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
@pytest.mark.parametrize("name", NAMES)
def test_no_floating_point_warnings_on_extreme_inputs(name, dtype):
    info = np.finfo(dtype)
    x = np.array([-np.inf, -info.max, -1e4, -100.0, -88.8, -info.tiny, 0.0, info.tiny, 88.8,
                  100.0, 1e4, info.max, np.inf], dtype=dtype)
    # NumPy's default error handling (underflow to 0 is not an error), warnings made errors.
    with warnings.catch_warnings(), np.errstate(over="warn", divide="warn", invalid="warn",
                                                under="ignore"):
        warnings.simplefilter("error")
        got = activations.get(name, np)(x)
    if name in ("tanh", "sigmoid", "hard_sigmoid", "hard_sigmoid_keras3"):
        assert np.all((got >= 0) | (name == "tanh")) and np.all(np.abs(got) <= 1)
        assert not np.any(np.isnan(got))
    if name == "sigmoid":
        assert got[0] == 0 and got[-1] == 1
        assert got[6] == 0.5


def test_sigmoid_tails_are_accurate_in_float32():
    # The stable form keeps the tiny left tail instead of rounding it to 0 too early.
    x = np.array([-80.0, -30.0, 30.0], np.float32)
    got = activations.get("sigmoid", np)(x)
    np.testing.assert_allclose(got, reference("sigmoid", x), rtol=1e-6)


def test_nan_propagates():
    x = np.array([np.nan], np.float32)
    for name in NAMES:
        assert np.isnan(activations.get(name, np)(x)[0]), name


# --------------------------------------------------------------------------------------------
# The kernels' table: one list of names, one definition for every target and dtype
# --------------------------------------------------------------------------------------------

def test_gpukb_names_are_the_kernel_table():
    from gpukb.kernels.cells import activations as table

    assert activations.SUPPORTED is table.NAMES or activations.SUPPORTED == table.NAMES
    assert [table.code(name) for name in NAMES] == list(range(len(NAMES)))
    with pytest.raises(ValueError, match="'swish'.*'hard_sigmoid_keras3'"):
        table.code("swish")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_table_functions_in_python_match_the_float64_formulas(dtype):
    """The table's functions as plain Python (what the CUDA simulator runs) on NumPy scalars."""
    from gpukb.kernels.cells import activations as table

    x = np.linspace(-12, 12, 97).astype(dtype)
    for name in NAMES:
        got = np.array([table.activate(table.code(name), v) for v in x])
        if name != "tanh":  # math.tanh gives a Python float in Python (compiled: x's type)
            assert got.dtype == np.dtype(dtype), name  # constants in x's type: no float64 creep
        tol = {"float32": 2e-7, "float64": 1e-15}[dtype]
        np.testing.assert_allclose(got, reference(name, x), rtol=tol * 4, atol=tol, err_msg=name)


SIMULATED = """
import json, numpy as np
from numba import cuda
from gpukb.kernels.cells import activations as table
from gpukb.kernels.cuda.activations import code, device_activation

act = device_activation(np.float32)

@cuda.jit
def apply(out, x, codes):
    i = cuda.grid(1)
    if i < x.size:
        for k in range(codes.size):
            out[k, i] = act(codes[k], x[i])

x = np.linspace(-12, 12, 97).astype(np.float32)
codes = np.array([code(n) for n in table.NAMES], np.int64)
out = np.zeros((codes.size, x.size), np.float32)
apply[1, 128](out, x, codes)
print(json.dumps(dict(shared=act is device_activation(np.float64) is table.activate,
                      names=list(table.NAMES), out=out.astype(float).tolist())))
"""


def test_cuda_activations_are_the_shared_table_under_the_simulator(tmp_path):
    """The CUDA kernels' activate is the table's function itself, for both dtypes, and a
    simulated kernel computes every activation as the float64 formulas say."""
    import importlib.util
    import json

    from helpers import run_python

    if importlib.util.find_spec("numba_cuda") is None:
        pytest.skip("numba-cuda is not installed (the test extra installs it)")
    result = run_python(SIMULATED, home=tmp_path, env={"NUMBA_ENABLE_CUDASIM": "1"})
    assert result.returncode == 0, result.stderr
    got = json.loads(result.stdout.strip().splitlines()[-1])
    assert got["shared"] and tuple(got["names"]) == NAMES
    x = np.linspace(-12, 12, 97).astype(np.float32)
    for name, row in zip(NAMES, got["out"]):
        np.testing.assert_allclose(row, reference(name, x), rtol=1e-6, atol=2e-7, err_msg=name)
