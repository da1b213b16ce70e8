"""gpukb.cells: Keras layers' numbers (from committed fixtures), validation, converted(), repr."""

import json
import os
import sys
import types

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpukb import cells
from gpukb.cells import Cell, GRUCell, LSTMCell, SimpleRNNCell

from helpers import run_python

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


# --------------------------------------------------------------------------------------------
# Against the real tf.keras layers (tests/fixtures/make_keras_fixtures.py)
# --------------------------------------------------------------------------------------------

with open(os.path.join(FIXTURES, "keras_cells.json")) as _fh:
    KERAS = json.load(_fh)
KERAS_CASES = sorted(KERAS["cases"])


@pytest.fixture(scope="module")
def keras_arrays():
    with np.load(os.path.join(FIXTURES, "keras_cells.npz")) as data:
        return {key: data[key] for key in data.files}


def case_arrays(store, name):
    return {k.split("/", 1)[1]: v for k, v in store.items() if k.startswith(name + "/")}


def cell_for(case, a):
    cfg = case["config"]
    kw = {"activation": cfg["activation"]}
    if case["layer"] != "SimpleRNN":
        kw["recurrent_activation"] = cfg["recurrent_activation"]
    if case["layer"] == "GRU":
        kw["reset_after"] = cfg["reset_after"]
    factory = {"LSTM": cells.lstm, "GRU": cells.gru, "SimpleRNN": cells.simple_rnn}
    return factory[case["layer"]](a["kernel"], a["recurrent_kernel"], a.get("bias"), **kw)


def test_fixture_index_records_versions_and_all_kinds():
    assert KERAS["versions"]["tf_keras"].startswith("2.")
    layers = {case["layer"] for case in KERAS["cases"].values()}
    assert layers == {"LSTM", "GRU", "SimpleRNN"}
    assert any(case["masked"] for case in KERAS["cases"].values())
    assert any(not case["config"]["use_bias"] for case in KERAS["cases"].values())
    assert any(case["config"].get("recurrent_activation") == "hard_sigmoid"
               for case in KERAS["cases"].values())


@pytest.mark.parametrize("name", KERAS_CASES)
def test_cell_loop_reproduces_keras_layer(name, keras_arrays):
    case = KERAS["cases"][name]
    a = case_arrays(keras_arrays, name)
    cell = cell_for(case, a)
    x = a["x"]
    batch, steps, _ = x.shape
    states = [a.get(f"{s}0", np.zeros((batch, cell.units), np.float32)) for s in case["states"]]
    mask = a.get("mask", np.ones((batch, steps), bool))
    zero_output = case["config"]["zero_output_for_mask"]
    order = range(steps - 1, -1, -1) if case["config"].get("go_backwards") else range(steps)
    prev = np.zeros((batch, cell.units), np.float32)
    outputs = []
    for t in order:
        out, new = cell(x[:, t], tuple(states))
        assert isinstance(new, list) and len(new) == len(states)
        # The layer's masking rule: a masked step keeps the states; its output is zeros or the
        # previous (masked) output, zeros before the first step.
        keep = mask[:, t][:, None]
        out = np.where(keep, out, np.zeros_like(out) if zero_output else prev)
        states = [np.where(keep, n, s) for n, s in zip(new, states)]
        prev = out
        outputs.append(out)
        assert out.dtype == np.float32
    np.testing.assert_allclose(np.stack(outputs, 1), a["outputs"], rtol=1e-5, atol=1e-5)
    for s, s_name in zip(states, case["states"]):
        np.testing.assert_allclose(s, a[s_name], rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------
# float64 formulas, written out gate by gate
# --------------------------------------------------------------------------------------------

def sig(v):
    return 1.0 / (1.0 + np.exp(-v))


ACT = {
    "tanh": np.tanh,
    "sigmoid": sig,
    "hard_sigmoid": lambda v: np.clip(0.2 * v + 0.5, 0.0, 1.0),
    "relu": lambda v: np.maximum(v, 0.0),
    "linear": lambda v: v,
}


def lstm_formula(x, h, c, W, U, b, act, rec):
    x, h, c, W, U = (np.float64(v) for v in (x, h, c, W, U))
    H = h.shape[1]
    bias = np.zeros(4 * H) if b is None else np.float64(b)
    gate = [x @ W[:, k * H:(k + 1) * H] + h @ U[:, k * H:(k + 1) * H] + bias[k * H:(k + 1) * H]
            for k in range(4)]
    i, f, o = ACT[rec](gate[0]), ACT[rec](gate[1]), ACT[rec](gate[3])
    c_new = f * c + i * ACT[act](gate[2])
    h_new = o * ACT[act](c_new)
    return h_new, [h_new, c_new]


def gru_formula(x, h, W, U, b, reset_after, act, rec):
    x, h, W, U = (np.float64(v) for v in (x, h, W, U))
    H = h.shape[1]
    if b is None:
        bx, bh = np.zeros(3 * H), np.zeros(3 * H)
    elif reset_after:
        bx, bh = np.float64(b[0]), np.float64(b[1])
    else:
        bx, bh = np.float64(b), np.zeros(3 * H)
    Wz, Wr, Wh = W[:, :H], W[:, H:2 * H], W[:, 2 * H:]
    Uz, Ur, Uh = U[:, :H], U[:, H:2 * H], U[:, 2 * H:]
    z = ACT[rec](x @ Wz + bx[:H] + h @ Uz + bh[:H])
    r = ACT[rec](x @ Wr + bx[H:2 * H] + h @ Ur + bh[H:2 * H])
    if reset_after:
        candidate = ACT[act](x @ Wh + bx[2 * H:] + r * (h @ Uh + bh[2 * H:]))
    else:
        candidate = ACT[act](x @ Wh + bx[2 * H:] + (r * h) @ Uh)
    h_new = z * h + (1.0 - z) * candidate
    return h_new, [h_new]


def simple_formula(x, h, W, U, b, act):
    x, h, W, U = (np.float64(v) for v in (x, h, W, U))
    pre = x @ W + h @ U + (0.0 if b is None else np.float64(b))
    y = ACT[act](pre)
    return y, [y]


NAMES = st.sampled_from(("tanh", "sigmoid", "hard_sigmoid", "relu", "linear"))


@given(
    kind=st.sampled_from(("lstm", "gru", "simple_rnn")),
    batch=st.integers(1, 4), input_dim=st.integers(1, 5), units=st.integers(1, 5),
    dtype=st.sampled_from(("float32", "float64")),
    use_bias=st.booleans(), reset_after=st.booleans(),
    act=NAMES, rec=NAMES, seed=st.integers(0, 2**32 - 1),
)
def test_step_matches_float64_formula(kind, batch, input_dim, units, dtype, use_bias,
                                      reset_after, act, rec, seed):
    rng = np.random.default_rng(seed)
    gates = {"lstm": 4, "gru": 3, "simple_rnn": 1}[kind]

    def r(*shape):
        return rng.uniform(-1, 1, shape).astype(dtype)

    W, U = r(input_dim, gates * units), r(units, gates * units)
    if not use_bias:
        b = None
    elif kind == "gru" and reset_after:
        b = r(2, 3 * units)
    else:
        b = r(gates * units)
    x, h, c = r(batch, input_dim), r(batch, units), r(batch, units)
    if kind == "lstm":
        cell = cells.lstm(W, U, b, activation=act, recurrent_activation=rec)
        out, new = cell(x, (h, c))
        ref_out, ref_new = lstm_formula(x, h, c, W, U, b, act, rec)
    elif kind == "gru":
        cell = cells.gru(W, U, b, reset_after=reset_after, activation=act,
                         recurrent_activation=rec)
        out, new = cell(x, (h,))
        ref_out, ref_new = gru_formula(x, h, W, U, b, reset_after, act, rec)
    else:
        cell = cells.simple_rnn(W, U, b, activation=act)
        out, new = cell(x, (h,))
        ref_out, ref_new = simple_formula(x, h, W, U, b, act)
    tol = 2e-6 if dtype == "float32" else 1e-12
    assert out.dtype == np.dtype(dtype) and out.shape == (batch, units)
    np.testing.assert_allclose(out, ref_out, rtol=tol, atol=tol)
    assert isinstance(new, list) and len(new) == len(ref_new)
    for got, want in zip(new, ref_new):
        assert got.dtype == np.dtype(dtype) and got.shape == (batch, units)
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


# --------------------------------------------------------------------------------------------
# Construction: attributes, layouts, validation
# --------------------------------------------------------------------------------------------

D, H = 4, 3


def w(*shape, dtype=np.float32):
    return np.arange(np.prod(shape), dtype=dtype).reshape(shape) / 10


def test_lstm_attributes():
    kernel, rec, bias = w(D, 4 * H), w(H, 4 * H), w(4 * H)
    cell = cells.lstm(kernel, rec, bias, activation=None, recurrent_activation="hard_sigmoid")
    assert isinstance(cell, LSTMCell) and isinstance(cell, Cell)
    assert cell.kind == "lstm"
    assert (cell.units, cell.input_dim, cell.dtype) == (H, D, np.dtype("float32"))
    assert cell.kernel is kernel and cell.recurrent_kernel is rec and cell.bias is bias
    assert cell.activation == "linear" and cell.recurrent_activation == "hard_sigmoid"
    assert cell.state_size == (H, H)


def test_gru_attributes():
    cell = cells.gru(w(D, 3 * H), w(H, 3 * H), w(2, 3 * H))
    assert isinstance(cell, GRUCell) and cell.kind == "gru"
    assert cell.reset_after is True and cell.state_size == (H,)
    assert cell.activation == "tanh" and cell.recurrent_activation == "sigmoid"
    cell = cells.gru(w(D, 3 * H), w(H, 3 * H), w(3 * H), reset_after=False)
    assert cell.reset_after is False and cell.bias.shape == (3 * H,)
    cell = cells.gru(w(D, 3 * H, dtype=np.float64), w(H, 3 * H, dtype=np.float64))
    assert cell.bias is None and cell.dtype == np.float64


def test_simple_rnn_attributes():
    cell = cells.simple_rnn(w(D, H), w(H, H), w(H), activation="relu")
    assert isinstance(cell, SimpleRNNCell) and cell.kind == "simple_rnn"
    assert cell.activation == "relu" and cell.state_size == (H,)
    assert not hasattr(cell, "recurrent_activation")


def test_repr():
    cell = cells.lstm(w(64, 4 * 128), w(128, 4 * 128), w(4 * 128))
    assert repr(cell) == ("LSTMCell(units=128, input_dim=64, dtype=float32, activation='tanh', "
                          "recurrent_activation='sigmoid')")
    cell = cells.gru(w(D, 3 * H), w(H, 3 * H), reset_after=False, recurrent_activation=None)
    assert repr(cell) == ("GRUCell(units=3, input_dim=4, dtype=float32, reset_after=False, "
                          "activation='tanh', recurrent_activation='linear')")
    cell = cells.simple_rnn(w(D, H, dtype=np.float64), w(H, H, dtype=np.float64))
    assert repr(cell) == "SimpleRNNCell(units=3, input_dim=4, dtype=float64, activation='tanh')"


BAD_SHAPES = [
    # factory, args, the argument named, the expected shape in the message, the shape seen
    (cells.lstm, (w(D, 4 * H), w(H, 3 * H)), "recurrent_kernel", "(3, 12)", "(3, 9)"),
    (cells.lstm, (w(D, 3 * H), w(H, 4 * H)), "kernel", "(4, 12)", "(4, 9)"),
    (cells.lstm, (w(D, 4 * H), w(H, 4 * H), w(3 * H)), "bias", "(12,)", "(9,)"),
    (cells.lstm, (w(D, 4 * H), w(H, 4 * H), w(1, 4 * H)), "bias", "(12,)", "(1, 12)"),
    (cells.lstm, (w(4 * H), w(H, 4 * H)), "kernel", "2-D", "(12,)"),
    (cells.lstm, (w(D, 4 * H), w(1, H, 4 * H)), "recurrent_kernel", "2-D", "(1, 3, 12)"),
    (cells.gru, (w(D, 3 * H), w(H, 3 * H), w(3 * H)), "bias", "(2, 9)", "(9,)"),
    (cells.gru, (w(D, 3 * H), w(H, 2 * H)), "recurrent_kernel", "(3, 9)", "(3, 6)"),
    (cells.simple_rnn, (w(D, H), w(H, H + 1)), "recurrent_kernel", "(3, 3)", "(3, 4)"),
    (cells.simple_rnn, (w(D, H), w(H, H), w(H + 1)), "bias", "(3,)", "(4,)"),
    (cells.simple_rnn, (w(D, 0), w(0, 0)), "recurrent_kernel", "units > 0", "(0, 0)"),
]


@pytest.mark.parametrize("factory, args, name, expected, seen", BAD_SHAPES)
def test_bad_shapes_name_argument_and_shapes(factory, args, name, expected, seen):
    with pytest.raises(ValueError) as info:
        factory(*args)
    message = str(info.value)
    assert f"{name} must" in message and expected in message and seen in message


def test_gru_reset_before_rejects_two_row_bias():
    with pytest.raises(ValueError, match=r"bias must have shape \(9,\), got shape \(2, 9\)"):
        cells.gru(w(D, 3 * H), w(H, 3 * H), w(2, 3 * H), reset_after=False)


@pytest.mark.parametrize("which", ["kernel", "recurrent_kernel", "bias"])
def test_non_array_weights_are_type_errors(which):
    args = {"kernel": w(D, H), "recurrent_kernel": w(H, H), "bias": w(H)}
    args[which] = args[which].tolist()
    with pytest.raises(TypeError, match=which):
        cells.simple_rnn(**args)


@pytest.mark.parametrize("which", ["kernel", "recurrent_kernel", "bias"])
def test_integer_weights_are_rejected(which):
    args = {"kernel": w(D, H), "recurrent_kernel": w(H, H), "bias": w(H)}
    args[which] = args[which].astype(np.int32)
    with pytest.raises(ValueError, match=f"{which} must have a floating dtype, got int32"):
        cells.simple_rnn(**args)


def test_mixed_dtypes_are_rejected():
    with pytest.raises(ValueError, match="one dtype; kernel is float32 but bias is float64"):
        cells.lstm(w(D, 4 * H), w(H, 4 * H), w(4 * H, dtype=np.float64))
    with pytest.raises(ValueError, match="recurrent_kernel is float16"):
        cells.gru(w(D, 3 * H), w(H, 3 * H, dtype=np.float16))


def test_bad_activations():
    with pytest.raises(ValueError, match="'tanh', 'sigmoid', 'hard_sigmoid', 'relu', 'linear'"):
        cells.lstm(w(D, 4 * H), w(H, 4 * H), activation="softsign")
    with pytest.raises(ValueError, match="'swish'"):
        cells.gru(w(D, 3 * H), w(H, 3 * H), recurrent_activation="swish")
    with pytest.raises(TypeError, match="name"):
        cells.simple_rnn(w(D, H), w(H, H), activation=np.tanh)
    with pytest.raises(TypeError, match="reset_after"):
        cells.gru(w(D, 3 * H), w(H, 3 * H), reset_after="yes")


# --------------------------------------------------------------------------------------------
# Calling: the rnn step protocol
# --------------------------------------------------------------------------------------------

def test_constants_after_the_states_are_ignored():
    rng = np.random.default_rng(0)
    cell = cells.lstm(*(rng.standard_normal(s).astype(np.float32)
                        for s in [(D, 4 * H), (H, 4 * H), (4 * H,)]))
    x, h, c = (rng.standard_normal(s).astype(np.float32) for s in [(2, D), (2, H), (2, H)])
    out, new = cell(x, (h, c))
    out2, new2 = cell(x, (h, c, np.ones((2, 7)), "anything"))
    np.testing.assert_array_equal(out, out2)
    assert all(np.array_equal(a, b) for a, b in zip(new, new2))
    assert out is new[0]  # the LSTM output is h
    out3, new3 = cell(x, [h, c])  # a list of states works too
    np.testing.assert_array_equal(out, out3)


def test_call_errors():
    cell = cells.gru(w(D, 3 * H), w(H, 3 * H))
    x, h = w(2, D), w(2, H)
    with pytest.raises(TypeError, match="states must be a tuple or list"):
        cell(x, h)
    with pytest.raises(ValueError, match=r"expected 1 state\(s\)"):
        cell(x, ())
    with pytest.raises(ValueError, match=r"step_input must have shape \(batch, 4\), got shape"):
        cell(w(2, D + 1), (h,))
    with pytest.raises(ValueError, match=r"step_input must have shape"):
        cell(w(2, 1, D), (h,))
    with pytest.raises(ValueError, match=r"states\[0\] must have shape \(2, 3\), got shape \(1, "):
        cell(x, (w(1, H),))
    with pytest.raises(ValueError, match=r"step_input has dtype int64, expected float32 \(floating arrays are "
                                         r"cast to it; integer and bool ones are not\)"):
        cell(np.ones((2, D), np.int64), (h,))
    lstm = cells.lstm(w(D, 4 * H), w(H, 4 * H))
    with pytest.raises(ValueError, match=r"expected 2 state\(s\) \[h, c\], got 1"):
        lstm(x, (h,))
    with pytest.raises(ValueError, match=r"states\[1\] has dtype bool"):
        lstm(x, (h, np.ones((2, H), bool)))


@pytest.mark.parametrize("dtype", ["float16", "float64"])
def test_computes_in_the_weights_dtype(dtype):
    cell = cells.lstm(w(D, 4 * H, dtype=dtype), w(H, 4 * H, dtype=dtype), w(4 * H, dtype=dtype))
    out, (h, c) = cell(w(2, D, dtype=dtype), (w(2, H, dtype=dtype), w(2, H, dtype=dtype)))
    assert out.dtype == h.dtype == c.dtype == np.dtype(dtype)


@pytest.mark.parametrize("weights, given", [("float64", "float32"), ("float32", "float64"),
                                            ("float32", "float16")])
def test_call_casts_floating_arguments_to_the_weights_dtype(weights, given):
    cell = cells.lstm(w(D, 4 * H, dtype=weights), w(H, 4 * H, dtype=weights), w(4 * H, dtype=weights))
    x, h, c = w(2, D, dtype=given), w(2, H, dtype=given) - 1, w(2, H, dtype=given)
    out, (h1, c1) = cell(x, (h, c))
    want, (h_want, c_want) = cell(x.astype(weights), (h.astype(weights), c.astype(weights)))
    assert out.dtype == h1.dtype == c1.dtype == np.dtype(weights)
    for got, expected in [(out, want), (h1, h_want), (c1, c_want)]:
        np.testing.assert_array_equal(got, expected)


# --------------------------------------------------------------------------------------------
# In gpukb.rnn: floating arguments cast once, up front
# --------------------------------------------------------------------------------------------

def _random_cell(kind, dtype, rng):
    gates = {"lstm": 4, "gru": 3, "simple_rnn": 1}[kind]
    W = 0.5 * rng.standard_normal((D, gates * H)) / np.sqrt(D)
    U = 0.5 * rng.standard_normal((H, gates * H)) / np.sqrt(H)
    b = 0.1 * rng.standard_normal((2, 3 * H) if kind == "gru" else gates * H)
    return getattr(cells, kind)(*(a.astype(dtype) for a in (W, U, b)))


@pytest.fixture
def cpu_paths(monkeypatch):
    """Records the path of each cpu-backend call from the plans gpukb.rnn logs (gpukb._plan) in
    ``taken``; setting ``generic_only`` makes the backend plan the generic loop."""
    from gpukb._plan import GENERIC, Plan, recorded_plans
    from gpukb.backends import cpu as cpu_backend

    paths = types.SimpleNamespace(taken=[], generic_only=False)
    original = cpu_backend.CPUBackend.plan

    def plan(self, call):
        return Plan(self.name, GENERIC, "test") if paths.generic_only else original(self, call)

    monkeypatch.setattr(cpu_backend.CPUBackend, "plan", plan)
    with recorded_plans() as logged:
        paths.taken = _PlanPaths(logged)
        yield paths


class _PlanPaths:
    """The live list of logged plans, compared by path."""

    def __init__(self, plans):
        self.plans = plans

    def __eq__(self, other):
        return [plan.path for plan in self.plans] == other


@pytest.mark.parametrize("kind", ["lstm", "gru", "simple_rnn"])
def test_rnn_casts_float32_arguments_for_a_float64_cell_once(kind, cpu_paths):
    import gpukb
    from gpukb.testing.reference import rnn_reference

    rng = np.random.default_rng(3)
    cell = _random_cell(kind, np.float64, rng)
    x = rng.standard_normal((2, 5, D)).astype(np.float32)
    states = [rng.standard_normal((2, H)).astype(np.float32) for _ in cell.state_size]
    mask = rng.random((2, 5)) < 0.7
    fused = gpukb.rnn(cell, x, states, mask=mask)
    cpu_paths.generic_only = True
    generic = gpukb.rnn(cell, x, states, mask=mask)
    assert cpu_paths.taken == ["fused_cell", "generic"]
    expected = rnn_reference(cell, x, states, mask=mask)
    for result in (fused, generic):
        got = [result[0], result[1], *result[2]]
        assert all(a.dtype == np.float64 for a in got)  # the cell's dtype, as in a Keras layer
        for a, want in zip(got, [expected[0], expected[1], *expected[2]]):
            np.testing.assert_allclose(a, want, rtol=1e-12, atol=1e-13)
    assert all(s.dtype == np.float32 for s in states)  # the caller's arrays are untouched


def test_rnn_rejects_integer_arguments_of_a_cell_before_any_step(cpu_paths):
    import gpukb

    cell = _random_cell("lstm", np.float32, np.random.default_rng(4))
    h = np.zeros((2, H), np.float32)
    with pytest.raises(ValueError, match=r"LSTMCell: inputs has dtype int64, expected float32 \(floating "
                                         r"arrays are cast to it; integer and bool ones are not\)"):
        gpukb.rnn(cell, np.ones((2, 5, D), np.int64), [h, h])
    with pytest.raises(ValueError, match=r"LSTMCell: initial_states\[1\] has dtype int32, expected float32"):
        gpukb.rnn(cell, np.ones((2, 5, D), np.float32), (h, h.astype(np.int32)))
    assert cpu_paths.taken == []  # rejected before any plan was made


# --------------------------------------------------------------------------------------------
# converted()
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("make", [
    lambda: cells.lstm(w(D, 4 * H), w(H, 4 * H), w(4 * H), "relu", "hard_sigmoid"),
    lambda: cells.gru(w(D, 3 * H), w(H, 3 * H), w(3 * H), reset_after=False, activation=None),
    lambda: cells.gru(w(D, 3 * H), w(H, 3 * H)),
    lambda: cells.simple_rnn(w(D, H), w(H, H), w(H), activation="sigmoid"),
])
def test_converted_passes_every_weight_through_asarray(make):
    cell = make()
    seen = []

    def asarray(a):
        seen.append(a)
        return np.array(a, dtype=np.float64)

    new = cell.converted(asarray)
    assert type(new) is type(cell) and new is not cell
    assert len(seen) == (3 if cell.bias is not None else 2)
    assert new.dtype == np.float64 and cell.dtype == np.float32  # the original is untouched
    assert repr(new) == repr(cell).replace("float32", "float64")
    assert new.kernel is not cell.kernel
    x = w(2, D)
    states = tuple(w(2, n) for n in cell.state_size)
    out, new_states = cell(x, states)
    out64, new_states64 = new(x.astype(np.float64), tuple(s.astype(np.float64) for s in states))
    np.testing.assert_allclose(out64, out, rtol=1e-5, atol=1e-6)


def test_converted_result_is_validated():
    cell = cells.simple_rnn(w(D, H), w(H, H), w(H))
    with pytest.raises(TypeError, match="kernel"):
        cell.converted(lambda a: a.tolist())


# --------------------------------------------------------------------------------------------
# Array libraries
# --------------------------------------------------------------------------------------------

def test_numpy_cells_do_not_import_cupy(tmp_path):
    code = (
        "import sys, numpy as np\n"
        "from gpukb import cells\n"
        "c = cells.lstm(np.ones((2, 8), np.float32), np.ones((2, 8), np.float32))\n"
        "c(np.ones((1, 2), np.float32), (np.zeros((1, 2), np.float32),) * 2)\n"
        "print('cupy' in sys.modules)\n"
    )
    result = run_python(code, home=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "False"


def test_namespace_comes_from_the_weights_module(monkeypatch):
    # A stand-in array library: an ndarray subclass whose type lives in module "fakexp", which
    # counts the calls the cell makes into it (as CuPy arrays would route to cupy.*).
    calls = []
    module = types.ModuleType("fakexp")

    class ndarray(np.ndarray):
        pass

    ndarray.__module__ = "fakexp"

    def counted(fn):
        def call(*args, **kwargs):
            calls.append(fn.__name__)
            return fn(*args, **kwargs)
        return call

    for fn_name in ("tanh", "exp", "clip", "minimum", "maximum", "where"):
        setattr(module, fn_name, counted(getattr(np, fn_name)))
    monkeypatch.setitem(sys.modules, "fakexp", module)

    def fake(a):
        return np.asarray(a).view(ndarray)

    cell = cells.lstm(w(D, 4 * H), w(H, 4 * H), w(4 * H)).converted(fake)
    assert isinstance(cell.kernel, ndarray)
    out, (h, c) = cell(fake(w(2, D)), (fake(w(2, H)), fake(w(2, H))))
    assert "tanh" in calls and "exp" in calls
    with pytest.raises(TypeError, match="numpy array but the weights are fakexp"):
        cell(w(2, D), (fake(w(2, H)), fake(w(2, H))))
    with pytest.raises(TypeError, match="one array library"):
        cells.simple_rnn(fake(w(D, H)), w(H, H))


def _cupy_or_skip():
    cupy = pytest.importorskip("cupy")
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            raise RuntimeError("no device")
    except Exception as exc:  # noqa: BLE001 - any CUDA failure means "no usable GPU"
        pytest.skip(f"no usable GPU for CuPy: {exc}")
    return cupy


@pytest.mark.gpu
@pytest.mark.parametrize("name", KERAS_CASES)
def test_cupy_cells_match_keras(name, keras_arrays):
    cupy = _cupy_or_skip()
    case = KERAS["cases"][name]
    a = case_arrays(keras_arrays, name)
    cell = cell_for(case, a).converted(cupy.asarray)
    assert isinstance(cell.kernel, cupy.ndarray)
    x = cupy.asarray(a["x"])
    batch, steps, _ = x.shape
    states = [cupy.asarray(a.get(f"{s}0", np.zeros((batch, cell.units), np.float32)))
              for s in case["states"]]
    mask = cupy.asarray(a.get("mask", np.ones((batch, steps), bool)))
    prev = cupy.zeros((batch, cell.units), cupy.float32)
    order = range(steps - 1, -1, -1) if case["config"].get("go_backwards") else range(steps)
    outputs = []
    for t in order:
        out, new = cell(x[:, t], tuple(states))
        assert isinstance(out, cupy.ndarray) and out.dtype == cupy.float32
        keep = mask[:, t][:, None]
        out = cupy.where(keep, out, 0 if case["config"]["zero_output_for_mask"] else prev)
        states = [cupy.where(keep, n, s) for n, s in zip(new, states)]
        prev = out
        outputs.append(out)
    np.testing.assert_allclose(cupy.asnumpy(cupy.stack(outputs, 1)), a["outputs"], rtol=1e-5,
                               atol=1e-5)
    with pytest.raises(TypeError, match="numpy array but the weights are cupy"):
        cell(a["x"][:, 0], tuple(states))


def test_cells_module_never_imports_cupy_itself():
    source = open(cells.__file__).read()
    assert "import cupy" not in source
    assert sys.modules.get("gpukb.cells") is cells


# --------------------------------------------------------------------------------------------
# The kernels' cell definitions (gpukb.kernels.cells) from numba.cuda.jit code
# --------------------------------------------------------------------------------------------

CUDA_CELLS = """
import json, numpy as np, gpukb
from numba import cuda
from gpukb.kernels.cells import gru, lstm, simple_rnn
from gpukb.kernels.cells.activations import code
from gpukb.kernels.cuda import activations  # noqa: F401  (the CUDA side of the table)


@cuda.jit
def lstm_step(z, c, h_out, c_out, act, ract):
    n, j = cuda.grid(2)
    H = c.shape[1]
    if n < c.shape[0] and j < H:
        h_out[n, j], c_out[n, j] = lstm.update(z[n, j], z[n, H + j], z[n, 2 * H + j],
                                               z[n, 3 * H + j], c[n, j], act, ract)


@cuda.jit
def gru_step(x, rec, h, out, act, ract):
    n, j = cuda.grid(2)
    H = h.shape[1]
    if n < h.shape[0] and j < H:
        out[n, j] = gru.update(x[n, j] + rec[n, j], x[n, H + j] + rec[n, H + j], x[n, 2 * H + j],
                               rec[n, 2 * H + j], h[n, j], act, ract)


@cuda.jit
def gru_gates(x, rec, h, z, rh, ract):
    n, j = cuda.grid(2)
    H = h.shape[1]
    if n < h.shape[0] and j < H:
        z[n, j], rh[n, j] = gru.gates_reset_before(x[n, j] + rec[n, j], x[n, H + j] + rec[n, H + j],
                                                   h[n, j], ract)


@cuda.jit
def gru_finish(z, h, candidate, out, act):
    n, j = cuda.grid(2)
    if n < h.shape[0] and j < h.shape[1]:
        out[n, j] = gru.update_reset_before(z[n, j], h[n, j], candidate[n, j], act)


@cuda.jit
def simple_step(z, out, act):
    n, j = cuda.grid(2)
    if n < out.shape[0] and j < out.shape[1]:
        out[n, j] = simple_rnn.update(z[n, j], act)


rng = np.random.default_rng(0)
B, D, H = 3, 4, 5
grid = ((1, 1), (8, 8))
errors = {}
for act, ract in (("tanh", "sigmoid"), ("relu", "hard_sigmoid_keras3")):
    x = rng.standard_normal((B, D))
    h = rng.standard_normal((B, H))
    c = rng.standard_normal((B, H))
    def weights(gates):
        return [rng.standard_normal(s) * 0.5 for s in ((D, gates * H), (H, gates * H))]
    W, U = weights(4)
    b = rng.standard_normal(4 * H)
    h_new, c_new = np.zeros((B, H)), np.zeros((B, H))
    lstm_step[grid](x @ W + h @ U + b, c, h_new, c_new, code(act), code(ract))
    want, (_, want_c) = gpukb.cells.lstm(W, U, b, act, ract)(x, (h, c))
    errors["lstm", act] = max(abs(h_new - want).max(), abs(c_new - want_c).max())

    W, U = weights(3)
    b = rng.standard_normal((2, 3 * H))
    out = np.zeros((B, H))
    gru_step[grid](x @ W + b[0], h @ U + b[1], h, out, code(act), code(ract))
    want, _ = gpukb.cells.gru(W, U, b, True, act, ract)(x, (h,))
    errors["gru", act] = abs(out - want).max()

    b = b[0]
    z, rh = np.zeros((B, H)), np.zeros((B, H))
    xw = x @ W + b
    gru_gates[grid](xw, h @ U[:, :2 * H], h, z, rh, code(ract))
    gru_finish[grid](z, h, xw[:, 2 * H:] + rh @ U[:, 2 * H:], out, code(act))
    want, _ = gpukb.cells.gru(W, U, b, False, act, ract)(x, (h,))
    errors["gru_before", act] = abs(out - want).max()

    W, U = weights(1)
    b = rng.standard_normal(H)
    simple_step[grid](x @ W + h @ U + b, out, code(act))
    want, _ = gpukb.cells.simple_rnn(W, U, b, act)(x, (h,))
    errors["simple_rnn", act] = abs(out - want).max()
print(json.dumps({f"{kind} {act}": float(e) for (kind, act), e in errors.items()}))
"""


def test_cell_definitions_run_in_cuda_kernels_under_the_simulator(tmp_path):
    """Kernels written with numba.cuda.jit call the one definition of each cell (LSTM, GRU in
    both reset_after modes, SimpleRNN) and match gpukb.cells, the reference, in float64."""
    import importlib.util

    if importlib.util.find_spec("numba_cuda") is None:
        pytest.skip("numba-cuda is not installed (the test extra installs it)")
    result = run_python(CUDA_CELLS, home=tmp_path, env={"NUMBA_ENABLE_CUDASIM": "1"})
    assert result.returncode == 0, result.stderr
    errors = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(errors) == 8
    assert all(e < 1e-12 for e in errors.values()), errors


PTX_CELLS = """
import json, re
import numba.cuda.dispatcher as dispatcher
from numba import cuda, float32, float64, int64
from gpukb.tools import ptx_check

if ptx_check.compiler_problem() is not None:
    print(json.dumps(None))
    raise SystemExit
dispatcher.get_current_device = lambda: ptx_check._TargetDevice((9, 0))
""" + CUDA_CELLS.split("rng = np.random")[0] + """
found = {}
for dtype in (float32, float64):
    a = dtype[:, ::1]
    for kernel, args in ((lstm_step, (a, a, a, a, int64, int64)), (gru_step, (a, a, a, a, int64, int64)),
                         (gru_gates, (a, a, a, a, a, int64)), (gru_finish, (a, a, a, a, int64)),
                         (simple_step, (a, a, int64))):
        ptx, _ = cuda.compile_ptx(kernel.py_func, args, cc=(9, 0))
        doubles = len(re.findall(r"^\\s*[a-z][a-z0-9.]*\\.f64\\b", ptx, re.MULTILINE))
        found[f"{kernel.py_func.__name__} {dtype}"] = doubles
print(json.dumps(found))
"""


def test_cell_definitions_compile_for_the_gpu_in_one_precision(tmp_path):
    """The same kernels compile to PTX for sm_90 (no GPU needed; the ptx-check extra), and the
    float32 ones hold no float64 instruction: constants take the values' type."""
    import importlib.util

    if importlib.util.find_spec("numba_cuda") is None:
        pytest.skip("numba-cuda is not installed (the test extra installs it)")
    result = run_python(PTX_CELLS, home=tmp_path)
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout.strip().splitlines()[-1])
    if found is None:
        pytest.skip("no CUDA compiler here (pip install 'gpukb[ptx-check]')")
    assert len(found) == 10
    assert all(n == 0 for name, n in found.items() if name.endswith("float32")), found
    assert all(n > 0 for name, n in found.items() if name.endswith("float64")), found
