"""gpukb.keras layers on hand-built ModelSpecs, against independent NumPy float64 math.

Each test builds a small model spec (as a file reader would), runs it with ``gpukb.keras.Model``
and compares with the Keras formula written out here in float64, for the Keras version the spec
says wrote it (``keras_major``). Mask propagation rules and load-time errors are checked on small
graphs. The saved-model fixtures (real Keras files) are checked in ``test_keras_model.py``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from gpukb.keras import Model, ModelFileError, UnsupportedLayerError
from gpukb.keras._spec import LayerSpec, ModelSpec, NodeSpec, TensorRef

RNG = np.random.default_rng(1234)
# Float32 model vs float64 reference: gpukb's relative-error target for saved models is 1e-5.
TOL = dict(rtol=2e-5, atol=2e-6)


# --------------------------------------------------------------------------------------------
# Building specs
# --------------------------------------------------------------------------------------------

def rand(*shape, scale=0.5):
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def L(name, class_name, config=None, weights=()):
    """A layer: (name, class_name, config, weights)."""
    return (name, class_name, dict(config or {}), [np.asarray(w) for w in weights])


def OP(name, class_name, config=None):
    """A Keras 3 graph operation, named as the readers name them (``ops.NotEqual``)."""
    return (name, "ops." + class_name, dict(config or {}), [])


def build(inputs, layers, nodes, outputs, *, keras_major=3, class_name="Functional", **model_kw):
    """A Model from ``inputs`` [(name, batch_shape, dtype)], ``layers`` (from ``L``),
    ``nodes`` [(layer, args, kwargs)] and ``outputs`` [TensorRef]."""
    specs = {}
    for i, (name, shape, dtype) in enumerate(inputs):
        specs[name] = LayerSpec(name, "InputLayer", {"name": name, "batch_shape": list(shape),
                                                       "dtype": dtype}, [], i)
    for name, cls, config, weights in layers:
        config.setdefault("name", name)
        if not cls.startswith("ops.") and keras_major >= 3:
            config.setdefault("trainable", True)  # every Keras 3 layer config has it
        specs[name] = LayerSpec(name, cls, config, weights, len(specs))
    node_specs, counts = [], {}
    for layer, args, kwargs in nodes:
        node_specs.append(NodeSpec(layer, counts.get(layer, 0), list(args), dict(kwargs)))
        counts[layer] = counts.get(layer, 0) + 1
    spec = ModelSpec("test_model", class_name, "3.15.1" if keras_major >= 3 else "2.21.0", keras_major,
                     "keras_v3" if keras_major >= 3 else "h5", specs, node_specs,
                     [TensorRef(name) for name, _, _ in inputs], list(outputs))
    return Model(spec, **model_kw)


def chain(input_shape, layers, *, keras_major=3, input_dtype="float32", **model_kw):
    """A Sequential-like chain: input 'x', then each layer on the previous output."""
    nodes, previous = [], TensorRef("x")
    for name, *_ in layers:
        nodes.append((name, [previous], {}))
        previous = TensorRef(name)
    return build([("x", input_shape, input_dtype)], layers, nodes, [previous], keras_major=keras_major,
                 class_name="Sequential", **model_kw)


def R(layer, node=0, tensor=0):
    return TensorRef(layer, node, tensor)


# --------------------------------------------------------------------------------------------
# Float64 references
# --------------------------------------------------------------------------------------------

def sigmoid(x):
    return 1 / (1 + np.exp(-x))


REF_ACTIVATIONS = {
    "linear": lambda x: x,
    "relu": lambda x: np.maximum(x, 0),
    "sigmoid": sigmoid,
    "tanh": np.tanh,
    "softmax": lambda x: np.exp(x) / np.exp(x).sum(-1, keepdims=True),
    "log_softmax": lambda x: x - np.log(np.exp(x).sum(-1, keepdims=True)),
    "elu": lambda x: np.where(x > 0, x, np.exp(x) - 1),
    "selu": lambda x: 1.0507009873554805 * np.where(x > 0, x, 1.6732632423543772 * (np.exp(x) - 1)),
    "softplus": lambda x: np.log(1 + np.exp(x)),
    "softsign": lambda x: x / (1 + np.abs(x)),
    "swish": lambda x: x * sigmoid(x),
    "silu": lambda x: x * sigmoid(x),
    "gelu": lambda x: 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2))),
    "exponential": np.exp,
    "relu6": lambda x: np.clip(x, 0, 6),
    "leaky_relu": lambda x: np.where(x > 0, x, 0.2 * x),
    "mish": lambda x: x * np.tanh(np.log(1 + np.exp(x))),
}
HARD_SIGMOID = {2: lambda x: np.clip(0.2 * x + 0.5, 0, 1), 3: lambda x: np.clip(x + 3, 0, 6) / 6}


def ref_rnn(kind, x, weights, units, *, mask=None, go_backwards=False, zero_output=False,
            return_sequences=False, states=None, act=np.tanh, rec=sigmoid, reset_after=True):
    """Keras's recurrent layer in float64: (output, final states)."""
    x = np.asarray(x, np.float64)
    W, U = (np.asarray(w, np.float64) for w in weights[:2])
    b = np.asarray(weights[2], np.float64) if len(weights) > 2 else None
    B, T, _ = x.shape
    H = units
    n = 2 if kind == "LSTM" else 1
    st = [np.zeros((B, H)) for _ in range(n)] if states is None else [np.asarray(s, np.float64) for s in states]
    prev = np.zeros((B, H))
    outs = []
    for t in (range(T - 1, -1, -1) if go_backwards else range(T)):
        xt, h = x[:, t], st[0]
        if kind == "LSTM":
            z = xt @ W + h @ U + (0 if b is None else b)
            i, f, g, o = (z[:, k * H:(k + 1) * H] for k in range(4))
            c = rec(f) * st[1] + rec(i) * act(g)
            new = [rec(o) * act(c), c]
        elif kind == "GRU":
            bx = bh = 0
            if b is not None:
                bx, bh = (b[0], b[1]) if reset_after else (b, 0)
            mx = xt @ W + bx
            if reset_after:
                mh = h @ U + bh
                z, r = rec(mx[:, :H] + mh[:, :H]), rec(mx[:, H:2 * H] + mh[:, H:2 * H])
                hh = act(mx[:, 2 * H:] + r * mh[:, 2 * H:])
            else:
                z = rec(mx[:, :H] + h @ U[:, :H])
                r = rec(mx[:, H:2 * H] + h @ U[:, H:2 * H])
                hh = act(mx[:, 2 * H:] + (r * h) @ U[:, 2 * H:])
            new = [z * h + (1 - z) * hh]
        else:
            new = [act(xt @ W + (0 if b is None else b) + h @ U)]
        keep = np.ones((B, 1), bool) if mask is None else np.asarray(mask)[:, t][:, None].astype(bool)
        st = [np.where(keep, a, s) for a, s in zip(new, st)]
        out = np.where(keep, new[0], 0.0 if zero_output else prev)
        prev = out
        outs.append(out)
    return (np.stack(outs, 1) if return_sequences else outs[-1]), st


def rnn_weights(kind, D, H, *, use_bias=True, reset_after=True):
    g = {"LSTM": 4, "GRU": 3, "SimpleRNN": 1}[kind]
    weights = [rand(D, g * H), rand(H, g * H)]
    if use_bias:
        weights.append(rand(2, g * H) if kind == "GRU" and reset_after else rand(g * H))
    return weights


MASK = np.array([[1, 1, 1, 1, 1, 1],      # unmasked
                 [0, 1, 1, 0, 1, 1],      # first step and a middle step masked
                 [1, 1, 1, 1, 0, 0],      # last steps masked
                 [0, 0, 0, 0, 0, 0]], bool)  # fully masked


def masked_input(D, mask=MASK, value=0.0):
    x = rand(mask.shape[0], mask.shape[1], D)
    x[~mask] = value
    return x


# --------------------------------------------------------------------------------------------
# Dense, Activation, identities
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("activation", sorted(REF_ACTIVATIONS) + ["hard_sigmoid"])
@pytest.mark.parametrize("keras_major", [2, 3])
def test_dense_activations_match_the_formula(activation, keras_major):
    W, b = rand(3, 4), rand(4)
    model = chain((None, 5, 3), [L("d", "Dense", {"units": 4, "activation": activation}, [W, b])],
                  keras_major=keras_major)
    x = rand(2, 5, 3, scale=2.0)
    ref = HARD_SIGMOID[keras_major] if activation == "hard_sigmoid" else REF_ACTIVATIONS[activation]
    expected = ref(x.astype(np.float64) @ W + b)
    out = model.predict(x)
    assert out.dtype == np.float32 and out.shape == (2, 5, 4)
    np.testing.assert_allclose(out, expected, **TOL)


def test_keras3_only_activations_are_refused_in_tf_keras_files():
    W = rand(3, 2)
    layers = [L("d", "Dense", {"units": 2, "activation": "hard_silu", "use_bias": False}, [W])]
    x = rand(2, 3, scale=3.0)
    out = chain((None, 3), layers, keras_major=3).predict(x)
    np.testing.assert_allclose(out, (x @ W) * HARD_SIGMOID[3](x @ W), **TOL)
    with pytest.raises(UnsupportedLayerError, match="hard_silu"):
        chain((None, 3), layers, keras_major=2)


def test_activation_layer_and_unknown_activation():
    x = rand(2, 4, scale=3.0)
    out = chain((None, 4), [L("a", "Activation", {"activation": "tanh"})]).predict(x)
    np.testing.assert_allclose(out, np.tanh(x.astype(np.float64)), **TOL)
    with pytest.raises(UnsupportedLayerError) as info:
        chain((None, 4), [L("a", "Activation", {"activation": "sparsemax"})])
    text = str(info.value)
    assert "'a'" in text and "Activation" in text and "position 1" in text and "sparsemax" in text
    assert "gelu" in text  # lists what is supported


@pytest.mark.parametrize("cls, config", [("Dropout", {"rate": 0.5}), ("SpatialDropout1D", {"rate": 0.3}),
                                         ("GaussianNoise", {"stddev": 1.0}),
                                         ("GaussianDropout", {"rate": 0.4})])
def test_noise_layers_are_identities_at_inference(cls, config):
    x = rand(2, 5, 3)
    np.testing.assert_array_equal(chain((None, 5, 3), [L("n", cls, config)]).predict(x), x)


def test_dense_without_bias_and_float64_layers():
    W = rand(3, 2)
    model = chain((None, 3), [L("d", "Dense", {"units": 2, "use_bias": False, "dtype": "float64"}, [W])],
                  input_dtype="float64")
    x = rand(4, 3)
    out = model.predict(x)
    assert out.dtype == np.float64
    np.testing.assert_allclose(out, x.astype(np.float64) @ W.astype(np.float64), rtol=1e-12)


# --------------------------------------------------------------------------------------------
# Recurrent layers
# --------------------------------------------------------------------------------------------

RNN_CASES = [
    ("LSTM", {}), ("GRU", {"reset_after": True}), ("GRU", {"reset_after": False}), ("SimpleRNN", {}),
]


@pytest.mark.parametrize("kind, extra", RNN_CASES)
@pytest.mark.parametrize("flags", [
    dict(return_sequences=True), dict(return_sequences=False),
    dict(return_sequences=True, go_backwards=True), dict(return_sequences=True, zero_output_for_mask=True),
    dict(return_sequences=False, go_backwards=True, use_bias=False),
])
def test_recurrent_layers_match_float64_loop_with_masks(kind, extra, flags):
    D, H = 3, 4
    use_bias = flags.get("use_bias", True)
    weights = rnn_weights(kind, D, H, use_bias=use_bias, reset_after=extra.get("reset_after", True))
    config = {"units": H, **extra, **flags}
    model = chain((None, 6, D), [L("m", "Masking", {"mask_value": 0.0}), L("r", kind, config, weights)])
    x = masked_input(D)
    expected, _ = ref_rnn(kind, x, weights, H, mask=MASK, go_backwards=flags.get("go_backwards", False),
                          zero_output=flags.get("zero_output_for_mask", False),
                          return_sequences=flags["return_sequences"],
                          reset_after=extra.get("reset_after", True))
    np.testing.assert_allclose(model.predict(x), expected, **TOL)


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "SimpleRNN"])
def test_return_state_outputs_and_their_masks(kind):
    D, H = 2, 3
    weights = rnn_weights(kind, D, H)
    n = 2 if kind == "LSTM" else 1
    layers = [L("m", "Masking"), L("r", kind, {"units": H, "return_sequences": True, "return_state": True},
                                   weights),
              L("after", "SimpleRNN", {"units": 2}, rnn_weights("SimpleRNN", H, 2))]
    nodes = [("m", [R("x")], {}), ("r", [R("m")], {}), ("after", [R("r", 0, 0)], {})]
    outputs = [R("r", 0, i) for i in range(1 + n)] + [R("after")]
    model = build([("x", (None, 6, D), "float32")], layers, nodes, outputs)
    x = masked_input(D)
    seq, states = ref_rnn(kind, x, weights, H, mask=MASK, return_sequences=True)
    got = model.predict(x)
    np.testing.assert_allclose(got[0], seq, **TOL)
    for i in range(n):
        np.testing.assert_allclose(got[1 + i], states[i], **TOL)
    # The sequence output keeps the mask (return_sequences), so the next RNN is masked too.
    after, _ = ref_rnn("SimpleRNN", seq, model.get_layer("after").weights, 2, mask=MASK)
    np.testing.assert_allclose(got[-1], after, **TOL)


@pytest.mark.parametrize("keras_major", [2, 3])
def test_hard_sigmoid_recurrent_activation_by_version(keras_major):
    weights = rnn_weights("LSTM", 2, 3)
    config = {"units": 3, "recurrent_activation": "hard_sigmoid"}
    model = chain((None, 4, 2), [L("r", "LSTM", config, weights)], keras_major=keras_major)
    # scale 4: many gate pre-activations lie where the two versions differ (|x| between 2.5 and 3)
    x = rand(3, 4, 2, scale=4.0)
    expected, _ = ref_rnn("LSTM", x, weights, 3, rec=HARD_SIGMOID[keras_major])
    other, _ = ref_rnn("LSTM", x, weights, 3, rec=HARD_SIGMOID[5 - keras_major])
    assert np.abs(expected - other).max() > 1e-3   # the test tells the two versions apart
    np.testing.assert_allclose(model.predict(x), expected, **TOL)


def test_recurrent_layer_unsupported_activation_names_the_layer():
    with pytest.raises(UnsupportedLayerError) as info:
        chain((None, 4, 2), [L("gru_1", "GRU", {"units": 3, "activation": "selu"}, rnn_weights("GRU", 2, 3))])
    assert "gru_1" in str(info.value) and "GRU" in str(info.value) and "activation='selu'" in str(info.value)


def test_initial_state_from_graph_tensors_both_versions():
    """Keras 3: the ``initial_state`` argument; tf.keras: extra tensors of a list input."""
    D, H = 2, 3
    weights = rnn_weights("LSTM", D, H)
    h0, c0 = rand(4, H), rand(4, H)
    x = rand(4, 5, D)
    expected, _ = ref_rnn("LSTM", x, weights, H, states=[h0, c0], return_sequences=True)
    inputs = [("x", (None, 5, D), "float32"), ("h", (None, H), "float32"), ("c", (None, H), "float32")]
    layers = [L("r", "LSTM", {"units": H, "return_sequences": True}, weights)]
    k3 = build(inputs, layers, [("r", [R("x")], {"initial_state": [R("h"), R("c")]})], [R("r")])
    k2 = build(inputs, layers, [("r", [[R("x"), R("h"), R("c")]], {})], [R("r")], keras_major=2)
    for model in (k3, k2):
        np.testing.assert_allclose(model.predict([x, h0, c0]), expected, **TOL)


def test_keras3_rnn_with_graph_initial_state_ignores_the_implicit_mask():
    """Keras 3 fills in ``mask`` only when the call has one tensor argument; with initial_state
    tensors the sequence's mask is not used (tf.keras takes the first input's mask)."""
    D, H = 2, 3
    weights = rnn_weights("GRU", D, H)
    x = masked_input(D)
    h0 = rand(4, H)
    inputs = [("x", (None, 6, D), "float32"), ("h", (None, H), "float32")]
    layers = [L("m", "Masking"), L("r", "GRU", {"units": H}, weights)]
    k3 = build(inputs, layers, [("m", [R("x")], {}), ("r", [R("m")], {"initial_state": [R("h")]})], [R("r")])
    k2 = build(inputs, layers, [("m", [R("x")], {}), ("r", [[R("m"), R("h")]], {})], [R("r")], keras_major=2)
    unmasked, _ = ref_rnn("GRU", x, weights, H, states=[h0])
    masked, _ = ref_rnn("GRU", x, weights, H, states=[h0], mask=MASK)
    np.testing.assert_allclose(k3.predict([x, h0]), unmasked, **TOL)
    np.testing.assert_allclose(k2.predict([x, h0]), masked, **TOL)


# --------------------------------------------------------------------------------------------
# Bidirectional and TimeDistributed
# --------------------------------------------------------------------------------------------

def _bidirectional(kind, H, merge_mode, *, return_sequences=True, return_state=False, backward=None,
                   keras_major=3, D=3):
    inner = {"class_name": kind, "config": {"name": "inner", "units": H, "return_sequences": return_sequences,
                                            "return_state": return_state}}
    config = {"layer": inner, "merge_mode": merge_mode}
    fwd = rnn_weights(kind, D, H)
    bwd = rnn_weights(kind, D, backward["config"]["units"] if backward else H)
    if backward:
        config["backward_layer"] = backward
    return config, fwd, bwd


@pytest.mark.parametrize("merge_mode", ["concat", "sum", "mul", "ave", None])
@pytest.mark.parametrize("return_sequences", [True, False])
def test_bidirectional_merge_modes_with_masks(merge_mode, return_sequences):
    D, H = 3, 4
    config, fwd, bwd = _bidirectional("GRU", H, merge_mode, return_sequences=return_sequences)
    layers = [L("m", "Masking"), L("bi", "Bidirectional", config, fwd + bwd)]
    outputs = [R("bi", 0, 0), R("bi", 0, 1)] if merge_mode is None else [R("bi")]
    model = build([("x", (None, 6, D), "float32")], layers, [("m", [R("x")], {}), ("bi", [R("m")], {})], outputs)
    x = masked_input(D)
    # Bidirectional forces zero_output_for_mask = return_sequences on both layers.
    y, _ = ref_rnn("GRU", x, fwd, H, mask=MASK, zero_output=return_sequences, return_sequences=return_sequences)
    y_rev, _ = ref_rnn("GRU", x, bwd, H, mask=MASK, zero_output=return_sequences,
                       return_sequences=return_sequences, go_backwards=True)
    if return_sequences:
        y_rev = y_rev[:, ::-1]
    expected = {"concat": lambda: np.concatenate([y, y_rev], -1), "sum": lambda: y + y_rev,
                "mul": lambda: y * y_rev, "ave": lambda: (y + y_rev) / 2, None: lambda: [y, y_rev]}[merge_mode]()
    got = model.predict(x)
    for g, e in zip(got if merge_mode is None else [got], expected if merge_mode is None else [expected]):
        np.testing.assert_allclose(g, e, **TOL)


@pytest.mark.parametrize("keras_major", [2, 3])
def test_bidirectional_return_state_and_separate_backward_layer(keras_major):
    D, H = 3, 4
    backward = {"class_name": "LSTM", "config": {"name": "back", "units": H, "return_sequences": False,
                                                 "return_state": True, "go_backwards": True,
                                                 "activation": "relu"}}
    config, fwd, bwd = _bidirectional("LSTM", H, "concat", return_sequences=False, return_state=True,
                                      backward=backward, keras_major=keras_major)
    outputs = [R("bi", 0, i) for i in range(5)]
    model = build([("x", (None, 6, D), "float32")], [L("bi", "Bidirectional", config, fwd + bwd)],
                  [("bi", [R("x")], {})], outputs, keras_major=keras_major)
    x = rand(4, 6, D)
    y, fs = ref_rnn("LSTM", x, fwd, H)
    y_rev, bs = ref_rnn("LSTM", x, bwd, H, go_backwards=True, act=lambda v: np.maximum(v, 0))
    got = model.predict(x)
    np.testing.assert_allclose(got[0], np.concatenate([y, y_rev], -1), **TOL)
    for g, e in zip(got[1:], fs + bs):
        np.testing.assert_allclose(g, e, **TOL)
    assert model.get_layer("bi").count_params() == sum(w.size for w in fwd + bwd)


def test_bidirectional_weight_count_mismatch_is_a_file_error():
    config, fwd, bwd = _bidirectional("GRU", 4, "concat")
    with pytest.raises(ModelFileError, match="3 \\+ 3 weight arrays"):
        chain((None, 6, 3), [L("bi", "Bidirectional", config, fwd + bwd[:2])])


@pytest.mark.parametrize("keras_major", [2, 3])
def test_time_distributed_dense_keeps_the_mask(keras_major):
    D, H = 3, 4
    W, b = rand(D, 2), rand(2)
    weights = rnn_weights("SimpleRNN", 2, H)
    td = {"layer": {"class_name": "Dense", "config": {"name": "dense", "units": 2, "activation": "tanh"}}}
    model = chain((None, 6, D), [L("m", "Masking"), L("td", "TimeDistributed", td, [W, b]),
                                 L("r", "SimpleRNN", {"units": H}, weights)], keras_major=keras_major)
    x = masked_input(D)
    dense = np.tanh(x.astype(np.float64) @ W + b)   # every step, masked or not
    expected, _ = ref_rnn("SimpleRNN", dense, weights, H, mask=MASK)
    np.testing.assert_allclose(model.predict(x), expected, **TOL)
    assert model.get_layer("td").count_params() == W.size + b.size


def test_time_distributed_refuses_a_recurrent_inner_layer():
    td = {"layer": {"class_name": "LSTM", "config": {"name": "inner", "units": 2}}}
    with pytest.raises(UnsupportedLayerError, match="TimeDistributed"):
        chain((None, 5, 4, 3), [L("td", "TimeDistributed", td, rnn_weights("LSTM", 3, 2))])


# --------------------------------------------------------------------------------------------
# Embedding and Masking
# --------------------------------------------------------------------------------------------

def test_embedding_lookup_and_mask_zero_reach_the_rnn():
    E = rand(10, 3)
    weights = rnn_weights("LSTM", 3, 4)
    model = chain((None, 6), [L("e", "Embedding", {"input_dim": 10, "output_dim": 3, "mask_zero": True}, [E]),
                              L("r", "LSTM", {"units": 4, "return_sequences": True}, weights)],
                  input_dtype="int32")
    ids = RNG.integers(1, 10, size=MASK.shape)
    ids[~MASK] = 0
    expected, _ = ref_rnn("LSTM", E[ids], weights, 4, mask=MASK, return_sequences=True)
    np.testing.assert_allclose(model.predict(ids), expected, **TOL)
    # Whole floats are ids too; fractional ones and ids out of range are errors.
    np.testing.assert_allclose(model.predict(ids.astype(np.float64)), expected, **TOL)
    with pytest.raises(ValueError, match="whole numbers"):
        model.predict(ids + 0.5)
    with pytest.raises(ValueError, match=r"\[0, 9\]"):
        model.predict(ids + 10)


def test_embedding_without_mask_zero_makes_no_mask():
    E = rand(5, 2)
    weights = rnn_weights("GRU", 2, 3)
    model = chain((None, 6), [L("e", "Embedding", {"input_dim": 5, "output_dim": 2}, [E]),
                              L("r", "GRU", {"units": 3}, weights)], input_dtype="int32")
    ids = np.where(MASK, 1, 0)
    expected, _ = ref_rnn("GRU", E[ids], weights, 3)
    np.testing.assert_allclose(model.predict(ids), expected, **TOL)


@pytest.mark.parametrize("keras_major", [2, 3])
def test_masking_zeroes_masked_steps_with_any_mask_value(keras_major):
    x = masked_input(3, value=-1.0)
    out = chain((None, 6, 3), [L("m", "Masking", {"mask_value": -1.0})], keras_major=keras_major).predict(x)
    np.testing.assert_array_equal(out, np.where(MASK[..., None], x, 0))


# --------------------------------------------------------------------------------------------
# Merges and their masks
# --------------------------------------------------------------------------------------------

MASK_B = np.array([[1, 1, 1, 1, 1, 1], [1, 0, 1, 1, 1, 0], [0, 1, 1, 1, 0, 0], [1, 0, 0, 0, 0, 0]], bool)


def _two_masked_branches(merge_cls, merge_config, keras_major, *, mask_b=True):
    """x1 -> Masking(MASK); x2 -> Masking(MASK_B) or nothing; merge; SimpleRNN reads the mask."""
    D, H = 3, 2
    weights = rnn_weights("SimpleRNN", 6 if merge_cls == "Concatenate" else D, H)
    layers = [L("m1", "Masking"), L("m2", "Masking"), L("merge", merge_cls, merge_config),
              L("r", "SimpleRNN", {"units": H, "return_sequences": True}, weights)]
    second = R("m2") if mask_b else R("x2")
    nodes = [("m1", [R("x1")], {}), ("m2", [R("x2")], {}), ("merge", [[R("m1"), second]], {}),
             ("r", [R("merge")], {})]
    model = build([("x1", (None, 6, D), "float32"), ("x2", (None, 6, D), "float32")], layers, nodes,
                  [R("merge"), R("r")], keras_major=keras_major)
    return model, weights


@pytest.mark.parametrize("keras_major", [2, 3])
@pytest.mark.parametrize("merge_cls", ["Add", "Average", "Subtract", "Maximum"])
def test_elementwise_merge_masks_or_in_keras3_and_in_tf_keras(merge_cls, keras_major):
    model, weights = _two_masked_branches(merge_cls, {}, keras_major)
    x1, x2 = masked_input(3), masked_input(3, MASK_B)
    a, b = np.where(MASK[..., None], x1, 0), np.where(MASK_B[..., None], x2, 0)
    merged = {"Add": a + b, "Average": (a + b) / 2, "Subtract": a - b, "Maximum": np.maximum(a, b)}[merge_cls]
    mask = MASK | MASK_B if keras_major == 3 else MASK & MASK_B
    got_merged, got = model.predict([x1, x2])
    np.testing.assert_allclose(got_merged, merged, **TOL)
    expected, _ = ref_rnn("SimpleRNN", merged, weights, 2, mask=mask, return_sequences=True)
    np.testing.assert_allclose(got, expected, **TOL)


@pytest.mark.parametrize("keras_major", [2, 3])
def test_elementwise_merge_with_one_unmasked_input(keras_major):
    """Keras 3: no mask when any input has none; tf.keras: the masks that exist."""
    model, weights = _two_masked_branches("Add", {}, keras_major, mask_b=False)
    x1, x2 = masked_input(3), rand(4, 6, 3)
    merged = np.where(MASK[..., None], x1, 0) + x2
    expected, _ = ref_rnn("SimpleRNN", merged, weights, 2, mask=None if keras_major == 3 else MASK,
                          return_sequences=True)
    np.testing.assert_allclose(model.predict([x1, x2])[1], expected, **TOL)


@pytest.mark.parametrize("keras_major", [2, 3])
def test_multiply_masks(keras_major):
    """Keras 3's Multiply counts masked entries as 1 and zeroes steps masked in every input."""
    model, weights = _two_masked_branches("Multiply", {}, keras_major)
    x1, x2 = masked_input(3), masked_input(3, MASK_B)
    a, b = np.where(MASK[..., None], x1, 0), np.where(MASK_B[..., None], x2, 0)
    if keras_major == 3:
        merged = np.where(MASK[..., None], a, 1) * np.where(MASK_B[..., None], b, 1)
        merged = np.where((MASK | MASK_B)[..., None], merged, 0)
        mask = MASK | MASK_B
    else:
        merged, mask = a * b, MASK & MASK_B
    got_merged, got = model.predict([x1, x2])
    np.testing.assert_allclose(got_merged, merged, **TOL)
    np.testing.assert_allclose(got, ref_rnn("SimpleRNN", merged, weights, 2, mask=mask, return_sequences=True)[0],
                               **TOL)


@pytest.mark.parametrize("keras_major", [2, 3])
@pytest.mark.parametrize("mask_b", [True, False])
def test_concatenate_masks(keras_major, mask_b):
    """Feature-axis concatenation: Keras 3 ORs the masks (an unmasked input counts as all
    valid), tf.keras ANDs them."""
    model, weights = _two_masked_branches("Concatenate", {"axis": -1}, keras_major, mask_b=mask_b)
    x1, x2 = masked_input(3), masked_input(3, MASK_B)
    a = np.where(MASK[..., None], x1, 0)
    b = np.where(MASK_B[..., None], x2, 0) if mask_b else x2
    other = MASK_B if mask_b else np.ones_like(MASK)
    mask = MASK | other if keras_major == 3 else MASK & other
    got_merged, got = model.predict([x1, x2])
    np.testing.assert_allclose(got_merged, np.concatenate([a, b], -1), **TOL)
    np.testing.assert_allclose(got, ref_rnn("SimpleRNN", np.concatenate([a, b], -1), weights, 2, mask=mask,
                                            return_sequences=True)[0], **TOL)


def test_merges_broadcast_lower_rank_inputs_after_the_batch_axis():
    layers = [L("add", "Add")]
    model = build([("a", (None, 4, 3), "float32"), ("b", (None, 3), "float32")], layers,
                  [("add", [[R("a"), R("b")]], {})], [R("add")])
    a, b = rand(2, 4, 3), rand(2, 3)  # (B, 3) is read as (B, 1, 3): NumPy alone could not add them
    np.testing.assert_allclose(model.predict([a, b]), a + b[:, None, :], **TOL)


# --------------------------------------------------------------------------------------------
# Flatten, Reshape (no masking: they drop the mask)
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cls, config", [("Flatten", {}), ("Reshape", {"target_shape": [6, 3]})])
def test_flatten_and_reshape_drop_the_mask(cls, config):
    weights = rnn_weights("SimpleRNN", 3 if cls == "Reshape" else 18, 2)
    reshape_back = [L("back", "Reshape", {"target_shape": [1, 18]})] if cls == "Flatten" else []
    layers = [L("m", "Masking"), L("f", cls, config)] + reshape_back + [
        L("r", "SimpleRNN", {"units": 2}, weights)]
    model = chain((None, 6, 3), layers)
    x = masked_input(3)
    flat = np.where(MASK[..., None], x, 0).reshape(4, 1, 18) if cls == "Flatten" else np.where(MASK[..., None], x, 0)
    expected, _ = ref_rnn("SimpleRNN", flat, weights, 2)  # no mask
    np.testing.assert_allclose(model.predict(x), expected, **TOL)


def test_flatten_channels_first_and_reshape_minus_one():
    x = rand(2, 3, 4)
    out = chain((None, 3, 4), [L("f", "Flatten", {"data_format": "channels_first"})]).predict(x)
    np.testing.assert_array_equal(out, np.transpose(x, (0, 2, 1)).reshape(2, -1))
    model = chain((None, 3, 4), [L("r", "Reshape", {"target_shape": [-1, 2]})])
    np.testing.assert_array_equal(model.predict(x), x.reshape(2, 6, 2))
    assert model.output_shapes == [(None, 6, 2)]
    with pytest.raises(ModelFileError, match="cannot reshape"):
        chain((None, 3, 4), [L("r", "Reshape", {"target_shape": [5, -1]})])


# --------------------------------------------------------------------------------------------
# Normalization
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("axis", [-1, [1, 2]])
@pytest.mark.parametrize("center, scale", [(True, True), (False, True), (True, False)])
def test_layer_normalization(axis, center, scale):
    x = rand(3, 4, 5, scale=3.0) + 1.0
    shape = (5,) if axis == -1 else (4, 5)
    gamma, beta = rand(*shape) + 1, rand(*shape)
    weights = ([gamma] if scale else []) + ([beta] if center else [])
    model = chain((None, 4, 5), [L("ln", "LayerNormalization",
                                   {"axis": axis, "epsilon": 1e-3, "center": center, "scale": scale}, weights)])
    axes = (-1,) if axis == -1 else (1, 2)
    x64 = x.astype(np.float64)
    normed = (x64 - x64.mean(axes, keepdims=True)) / np.sqrt(x64.var(axes, keepdims=True) + 1e-3)
    expected = normed * (gamma if scale else 1) + (beta if center else 0)
    np.testing.assert_allclose(model.predict(x), expected, **TOL)


def test_batch_normalization_uses_moving_statistics():
    x = rand(3, 4, 5, scale=2.0)
    gamma, beta, mean, var = rand(5) + 1, rand(5), rand(5), np.abs(rand(5)) + 0.5
    model = chain((None, 4, 5), [L("bn", "BatchNormalization", {"epsilon": 1e-3, "momentum": 0.9},
                                   [gamma, beta, mean, var])])
    expected = (x.astype(np.float64) - mean) / np.sqrt(var.astype(np.float64) + 1e-3) * gamma + beta
    np.testing.assert_allclose(model.predict(x), expected, **TOL)
    with pytest.raises(ModelFileError, match="needs 4 weight arrays"):
        chain((None, 4, 5), [L("bn", "BatchNormalization", {}, [gamma, beta, mean])])
    with pytest.raises(UnsupportedLayerError, match="renorm"):
        chain((None, 4, 5), [L("bn", "BatchNormalization", {"renorm": True}, [gamma, beta, mean, var])])


# --------------------------------------------------------------------------------------------
# Keras 3 mask operations in the graph
# --------------------------------------------------------------------------------------------

def test_keras3_mask_operations_feed_an_explicit_mask():
    """What Keras 3 saves for Concatenate([Embedding(mask_zero), Masking]) -> LSTM: the mask is
    computed by op nodes and passed to the LSTM as its ``mask`` argument."""
    E = rand(10, 3)
    weights = rnn_weights("LSTM", 6, 4)
    layers = [
        L("emb", "Embedding", {"input_dim": 10, "output_dim": 3, "mask_zero": True}, [E]),
        L("masking", "Masking"),
        OP("ne_x", "NotEqual"), OP("any", "Any", {"axis": -1, "keepdims": False}),
        OP("ne_tok", "NotEqual"), OP("ed", "ExpandDims", {"axis": -1}), OP("zl", "ZerosLike", {"dtype": "bool"}),
        OP("ed1", "ExpandDims", {"axis": -1}), OP("zl1", "ZerosLike", {"dtype": "bool"}),
        OP("or", "LogicalOr"), OP("or1", "LogicalOr"), OP("cat_op", "Concatenate", {"axis": -1}),
        L("cat", "Concatenate", {"axis": -1}), OP("any1", "Any", {"axis": -1, "keepdims": False}),
        L("lstm", "LSTM", {"units": 4, "return_sequences": True}, weights),
    ]
    nodes = [("ne_x", [R("x"), 0.0], {}), ("emb", [R("tok")], {}), ("masking", [R("x")], {}),
             ("ne_tok", [R("tok"), 0], {}), ("any", [R("ne_x")], {}), ("ed", [R("ne_tok")], {}),
             ("zl", [R("emb")], {}), ("ed1", [R("any")], {}), ("zl1", [R("masking")], {}),
             ("or", [R("ed"), R("zl")], {}), ("or1", [R("ed1"), R("zl1")], {}),
             ("cat_op", [[R("or"), R("or1")]], {}), ("cat", [[R("emb"), R("masking")]], {}),
             ("any1", [R("cat_op")], {}), ("lstm", [R("cat")], {"training": False, "mask": R("any1")})]
    model = build([("x", (None, 6, 3), "float32"), ("tok", (None, 6), "int32")], layers, nodes, [R("lstm")])
    assert [layer.name for layer in model.layers] == ["x", "tok", "emb", "masking", "cat", "lstm"]
    x = masked_input(3)
    tok = RNG.integers(1, 10, size=MASK.shape)
    tok[~MASK_B] = 0
    features = np.concatenate([E[tok], np.where(MASK[..., None], x, 0)], -1)
    expected, _ = ref_rnn("LSTM", features, weights, 4, mask=MASK | MASK_B, return_sequences=True)
    np.testing.assert_allclose(model.predict({"x": x, "tok": tok}), expected, **TOL)


# --------------------------------------------------------------------------------------------
# Load-time errors
# --------------------------------------------------------------------------------------------

def test_unknown_option_names_layer_class_position_and_option():
    with pytest.raises(UnsupportedLayerError) as info:
        chain((None, 3), [L("d", "Dense", {"units": 2}, [rand(3, 2), rand(2)]),
                          L("dd", "Dense", {"units": 2, "fancy_option": 7}, [rand(2, 2), rand(2)])])
    text = str(info.value)
    assert "'dd'" in text and "Dense" in text and "position 2" in text and "fancy_option=7" in text


@pytest.mark.parametrize("config, match", [
    ({"units": 3, "time_major": True}, "time_major"),
    ({"units": 3, "dtype": "mixed_float16"}, "mixed_float16"),
    ({"units": 3, "num_constants": 1}, "num_constants"),
])
def test_unsupported_recurrent_options(config, match):
    with pytest.raises(UnsupportedLayerError, match=match):
        chain((None, 4, 2), [L("r", "SimpleRNN", config, rnn_weights("SimpleRNN", 2, 3))])


@pytest.mark.parametrize("weights, match", [
    (lambda: rnn_weights("LSTM", 2, 3)[:2], "needs 3 weight arrays"),
    (lambda: [rand(5, 12), rand(3, 12), rand(12)], r"kernel.*\(2, 12\)"),
    (lambda: [rand(2, 12), rand(3, 12), rand(2, 12)], r"bias.*\(12,\)"),
])
def test_weights_that_disagree_with_the_config_are_file_errors(weights, match):
    with pytest.raises(ModelFileError, match=match):
        chain((None, 4, 2), [L("r", "LSTM", {"units": 3}, weights())])


@pytest.mark.parametrize("cls, match", [("Lambda", "Python code"), ("Conv1D", "does not implement")])
def test_unsupported_layers_list_the_supported_ones(cls, match):
    with pytest.raises(UnsupportedLayerError) as info:
        chain((None, 4, 2), [L("odd", cls, {})])
    text = str(info.value)
    assert match in text and "'odd'" in text and cls in text and "position 1" in text
    assert "LSTM" in text and "Bidirectional" in text


def test_stateful_layer_needs_a_fixed_batch_size():
    with pytest.raises(ModelFileError, match="stateful"):
        chain((None, 4, 2), [L("r", "GRU", {"units": 3, "stateful": True}, rnn_weights("GRU", 2, 3))])


def test_shapes_are_checked_through_the_graph_at_load():
    with pytest.raises(ModelFileError, match="kernel takes 3 features"):
        build([("a", (None, 3), "float32"), ("b", (None, 4), "float32")],
              [L("d", "Dense", {"units": 2}, [rand(3, 2), rand(2)])],
              [("d", [R("a")], {}), ("d", [R("b")], {})], [R("d", 1)])


def test_count_params_and_describe():
    model = chain((None, 5, 3), [L("r", "LSTM", {"units": 4}, rnn_weights("LSTM", 3, 4)),
                                 L("d", "Dense", {"units": 2}, [rand(4, 2), rand(2)])])
    r, d = model.layers
    assert (r.count_params(), d.count_params()) == (3 * 16 + 4 * 16 + 16, 10)
    assert r.describe("cpu") == "fused cpu kernel (Numba)"
    assert "generic loop" in r.describe("torch")


def test_non_trainable_parameters_as_keras_counts_them():
    from gpukb.keras._summary import trainable_counts

    bn = [rand(5), rand(5), rand(5), np.abs(rand(5)) + 0.5]
    td = {"layer": {"class_name": "BatchNormalization", "config": {"name": "inner"}}}
    model = chain((None, 4, 5), [L("bn", "BatchNormalization", {}, bn),
                                 L("td", "TimeDistributed", td, bn),
                                 L("frozen", "Dense", {"units": 2, "trainable": False}, [rand(5, 2), rand(2)])])
    assert trainable_counts(model) == (5 + 5 + 5 + 5, 10 + 10 + 12)
