"""gpukb.keras.Model and load_model: the saved-model fixtures (real Keras files) against the
outputs Keras recorded, and the Model API (inputs, batching, states, summary, errors).

The fixtures are written by ``tests/fixtures/keras_models/make_keras_models.py`` with Keras 3
(``.keras``) and tf_keras (legacy ``.h5`` and ``.keras``); ``manifest.json`` lists, per case, the
file of each writer and, per Keras (``models``), the inputs and outputs, per-layer parameter
counts and output shapes, and the summary totals; ``<case>.npz`` holds the inputs and each
writer's ``model.predict`` outputs (see the fixtures' README).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

import gpukb
import gpukb.keras
from gpukb.keras import Model, ModelFileError, UnsupportedLayerError, load_model
from gpukb.keras._summary import trainable_counts
from helpers import run_python
from test_keras_layers import L, MASK, R, TOL, build, chain, masked_input, rand, ref_rnn, rnn_weights

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "keras_models"
MANIFEST = json.loads((FIXTURES / "manifest.json").read_text())
CASES = [(case, writer) for case, info in MANIFEST["cases"].items() for writer in info["files"]]
# gpukb's target for a saved model: float32 outputs within 1e-5 relative error of Keras's.
MAX_RELATIVE_ERROR = 1e-5


def _recorded_model(info, writer):
    """What the manifest recorded about the model (per Keras) that ``writer`` saved."""
    return info["models"][info["files"][writer]["model"]]


def _inputs(npz, prefix=""):
    names = sorted((k for k in npz.files if k.startswith(prefix + "x") and k[len(prefix) + 1:].isdigit()),
                   key=lambda k: int(k[len(prefix) + 1:]))
    return [npz[k] for k in names]


def _assert_close_to_keras(got, expected, what):
    got = got if isinstance(got, list) else [got]
    assert len(got) == len(expected), what
    for i, (g, e) in enumerate(zip(got, expected)):
        assert g.shape == e.shape and g.dtype == e.dtype, f"{what} output {i}: {g.shape} {g.dtype} vs {e.shape} {e.dtype}"
        finite = np.isfinite(e)
        if not finite.all():
            # Keras overflowed: gpukb must overflow at the same entries (inf or nan: which one
            # depends on the order of float operations). The finite values on the way there
            # (up to ~1e38) amplify rounding differences, so they are not compared.
            np.testing.assert_array_equal(np.isfinite(g), finite, err_msg=f"{what} output {i}: overflow")
            continue
        g64, e64 = g.astype(np.float64), e.astype(np.float64)
        error = np.linalg.norm(g64 - e64) / max(np.linalg.norm(e64), 1e-30)
        assert error <= MAX_RELATIVE_ERROR, f"{what} output {i}: relative error {error:.2e}"


@pytest.mark.parametrize("case, writer", CASES, ids=[f"{c}-{w}" for c, w in CASES])
def test_fixture_predictions_match_keras(case, writer):
    info = MANIFEST["cases"][case]
    path = FIXTURES / info["files"][writer]["file"]
    if info["expect_error"]:
        error = ModelFileError if "weight" in info["expect_error"] else UnsupportedLayerError
        with pytest.raises(error) as caught:
            load_model(path)
        # The message names the file and the layer (its class and position).
        assert path.name in str(caught.value) and "position" in str(caught.value), str(caught.value)
        return
    npz = np.load(FIXTURES / info["npz"])
    model = load_model(path)
    x = _inputs(npz)
    n_out = len(_recorded_model(info, writer)["outputs"])
    first = [npz[f"{writer}.y{i}"] for i in range(n_out)]
    _assert_close_to_keras(model.predict(x if len(x) > 1 else x[0]), first, f"{case} {writer}")
    if info["stateful"]:
        second = [npz[f"{writer}.chunk2.y{i}"] for i in range(n_out)]
        x2 = _inputs(npz, "chunk2.")
        _assert_close_to_keras(model.predict(x2 if len(x2) > 1 else x2[0]), second, f"{case} {writer} chunk 2")
        model.reset_states()
        again = [npz[f"{writer}.after_reset.y{i}"] for i in range(n_out)]
        _assert_close_to_keras(model.predict(x if len(x) > 1 else x[0]), again, f"{case} {writer} after reset")


@pytest.mark.parametrize("case, writer", CASES, ids=[f"{c}-{w}" for c, w in CASES])
def test_fixture_layers_params_and_shapes_match_keras(case, writer):
    info = MANIFEST["cases"][case]
    recorded = _recorded_model(info, writer)
    if info["expect_error"]:
        pytest.skip("the model does not load (checked in test_fixture_predictions_match_keras)")
    model = load_model(FIXTURES / info["files"][writer]["file"])
    assert [(layer.name, layer.class_name) for layer in model.layers] == [
        (entry["name"], entry["class_name"]) for entry in recorded["layers"]]
    for layer, entry in zip(model.layers, recorded["layers"]):
        assert layer.count_params() == entry["count_params"], layer.name
        shapes = [[list(s.shape) for s in sym] if isinstance(sym, list) else [list(sym.shape)]
                  for (name, _), sym in model._node_syms.items() if name == layer.name]
        if layer.class_name == "InputLayer":
            shapes = [[list(model.input_shapes[model.input_names.index(layer.name)])]]
        assert shapes == entry["output_shapes"], layer.name
    trainable, frozen = trainable_counts(model)
    summary = recorded["summary"]
    assert (trainable + frozen, trainable, frozen) == (
        summary["total_params"], summary["trainable_params"], summary["non_trainable_params"])
    assert [[r.layer, r.node_index, r.tensor_index] for r in model.spec.outputs] == recorded["outputs"]


# --------------------------------------------------------------------------------------------
# Model API on hand-built specs
# --------------------------------------------------------------------------------------------

def _stack(*, stateful_batch=None, keras_major=3):
    """x (B, T, 3) -> LSTM(4, seq) -> GRU(3, seq) -> TimeDistributed(Dense(2))."""
    lstm, gru = rnn_weights("LSTM", 3, 4), rnn_weights("GRU", 4, 3)
    dense = [rand(3, 2), rand(2)]
    stateful = stateful_batch is not None
    td = {"layer": {"class_name": "Dense", "config": {"name": "d", "units": 2}}}
    layers = [L("lstm", "LSTM", {"units": 4, "return_sequences": True, "stateful": stateful}, lstm),
              L("gru", "GRU", {"units": 3, "return_sequences": True, "stateful": stateful}, gru),
              L("td", "TimeDistributed", td, dense)]
    model = chain((stateful_batch, None, 3), layers, keras_major=keras_major)
    return model, lstm, gru, dense


def _stack_reference(x, lstm, gru, dense, states=None, mask=None):
    y, (h, c) = ref_rnn("LSTM", x, lstm, 4, return_sequences=True, states=states and states["lstm"], mask=mask)
    z, (g,) = ref_rnn("GRU", y, gru, 3, return_sequences=True, states=states and states["gru"], mask=mask)
    return z @ dense[0] + dense[1], {"lstm": [h, c], "gru": [g]}


def test_streaming_in_chunks_with_states_equals_one_call():
    model, lstm, gru, dense = _stack()
    x = rand(3, 12, 3)
    whole, final = model.predict(x, return_states=True)
    expected, expected_states = _stack_reference(x, lstm, gru, dense)
    np.testing.assert_allclose(whole, expected, **TOL)
    for name in ("lstm", "gru"):
        for got, want in zip(final[name], expected_states[name]):
            np.testing.assert_allclose(got, want, **TOL)
    states, parts = None, []
    for start in (0, 5, 9):
        stop = {0: 5, 5: 9, 9: 12}[start]
        out, states = model.predict(x[:, start:stop], initial_states=states, return_states=True)
        parts.append(out)
    np.testing.assert_allclose(np.concatenate(parts, axis=1), whole, rtol=1e-6, atol=1e-7)
    for name in ("lstm", "gru"):
        for got, want in zip(states[name], final[name]):
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_streaming_with_masks_carries_states_through_masked_steps():
    """A mask holds the states; chunks that start with a valid step continue the stream exactly
    (a chunk's leading masked steps output zeros, as any sequence's do)."""
    weights = rnn_weights("LSTM", 3, 4)
    model = chain((None, None, 3), [L("m", "Masking"), L("r", "LSTM", {"units": 4, "return_sequences": True},
                                                          weights)])
    mask = np.ones((2, 8), bool)
    mask[0, 2:4] = False  # masked inside the first chunk
    mask[1, 5:8] = False  # masked at the end of the second chunk
    x = masked_input(3, mask)
    whole = model.predict(x)
    np.testing.assert_allclose(whole, ref_rnn("LSTM", x, weights, 4, mask=mask, return_sequences=True)[0], **TOL)
    first, states = model.predict(x[:, :4], return_states=True)
    second = model.predict(x[:, 4:], initial_states=states)
    np.testing.assert_allclose(np.concatenate([first, second], axis=1), whole, rtol=1e-6, atol=1e-7)


def test_initial_states_are_refused_for_backward_and_bidirectional_layers():
    back = chain((None, 5, 3), [L("r", "GRU", {"units": 2, "go_backwards": True}, rnn_weights("GRU", 3, 2))])
    x = rand(2, 5, 3)
    _, states = back.predict(x, return_states=True)  # final states are given for every layer
    with pytest.raises(ValueError, match="backwards"):
        back.predict(x, initial_states=states)
    inner = {"class_name": "LSTM", "config": {"name": "l", "units": 2}}
    bi = chain((None, 5, 3), [L("bi", "Bidirectional", {"layer": inner},
                                rnn_weights("LSTM", 3, 2) + rnn_weights("LSTM", 3, 2))])
    _, states = bi.predict(x, return_states=True)
    assert [s.shape for s in states["bi"]] == [(2, 2)] * 4
    with pytest.raises(ValueError, match="backwards"):
        bi.predict(x, initial_states=states)


@pytest.mark.parametrize("bad, error, match", [
    ({"dense": [np.zeros((2, 4))]}, ValueError, "not a recurrent layer"),
    ({"lstm": [np.zeros((2, 4))]}, ValueError, r"list of 2 arrays"),
    ({"lstm": [np.zeros((2, 5)), np.zeros((2, 4))]}, ValueError, r"shape \(2, 4\)"),
    ([np.zeros((2, 4))], TypeError, "must be a dict"),
])
def test_bad_initial_states(bad, error, match):
    model, *_ = _stack()
    if isinstance(bad, dict) and "dense" in bad:
        bad = {"td": bad["dense"]}
    with pytest.raises(error, match=match):
        model.predict(rand(2, 5, 3), initial_states=bad)


def test_stateful_layers_keep_states_between_calls_until_reset():
    model, lstm, gru, dense = _stack(stateful_batch=2)
    x1, x2 = rand(2, 4, 3), rand(2, 6, 3)
    y1 = model.predict(x1)
    expected1, states = _stack_reference(x1, lstm, gru, dense)
    np.testing.assert_allclose(y1, expected1, **TOL)
    expected2, _ = _stack_reference(x2, lstm, gru, dense, states=states)
    np.testing.assert_allclose(model.predict(x2), expected2, **TOL)
    model.reset_states()
    np.testing.assert_allclose(model.predict(x1), expected1, **TOL)
    with pytest.raises(ValueError, match="batch size 2"):
        model.predict(rand(3, 4, 3))
    # Batches of the stateful size run one after the other, carrying the states (as Keras).
    model.reset_states()
    both = model.predict(np.concatenate([x1, x1]), batch_size=2)
    np.testing.assert_allclose(both[:2], expected1, **TOL)
    np.testing.assert_allclose(both[2:], _stack_reference(x1, lstm, gru, dense, states=states)[0], **TOL)


def test_batch_size_gives_the_same_outputs_and_states():
    model, *_ = _stack()
    x = rand(7, 5, 3)
    whole, states = model.predict(x, return_states=True)
    batched, batched_states = model.predict(x, batch_size=3, return_states=True)
    np.testing.assert_allclose(batched, whole, rtol=1e-6, atol=1e-7)
    for name in states:
        for a, b in zip(batched_states[name], states[name]):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="batch_size"):
            model.predict(x, batch_size=bad)


def _two_inputs():
    weights = rnn_weights("SimpleRNN", 3, 2)
    layers = [L("r", "SimpleRNN", {"units": 2}, weights), L("d", "Dense", {"units": 2}, [rand(4, 2), rand(2)]),
              L("cat", "Concatenate", {"axis": -1})]
    nodes = [("r", [R("seq")], {}), ("cat", [[R("r"), R("feat")]], {}), ("d", [R("cat")], {})]
    return build([("seq", (None, 5, 3), "float32"), ("feat", (None, 2), "float32")], layers, nodes,
                 [R("d"), R("r")])


def test_several_inputs_and_outputs_as_lists_or_dicts():
    model = _two_inputs()
    seq, feat = rand(2, 5, 3), rand(2, 2)
    out = model.predict([seq, feat])
    assert isinstance(out, list) and [o.shape for o in out] == [(2, 2), (2, 2)]
    for a, b in zip(model.predict({"feat": feat, "seq": seq}), out):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(model([seq, feat]), out):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="missing"):
        model.predict({"seq": seq})
    with pytest.raises(ValueError, match="takes 2 inputs"):
        model.predict([seq])


@pytest.mark.parametrize("x, error, match", [
    (lambda: rand(2, 5), ValueError, r"input 'x' must have shape \(None, None, 3\)"),
    (lambda: rand(2, 5, 4), ValueError, "input 'x' must have shape"),
    (lambda: np.zeros((2, 5, 3), complex), TypeError, "input 'x' has dtype complex128"),
    (lambda: np.zeros((0, 5, 3), np.float32), ValueError, "empty"),
])
def test_inputs_are_checked_before_any_work(x, error, match):
    model, *_ = _stack()
    with pytest.raises(error, match=match):
        model.predict(x())


def test_float_inputs_are_cast_to_the_model_dtype():
    model, *_ = _stack()
    x = rand(2, 5, 3)
    out64 = model.predict(x.astype(np.float64))
    assert out64.dtype == np.float32
    np.testing.assert_array_equal(out64, model.predict(x))
    np.testing.assert_array_equal(model.predict(x.tolist()), model.predict(x))


def test_batch_sizes_of_several_inputs_must_agree():
    model = _two_inputs()
    with pytest.raises(ValueError, match="one batch size"):
        model.predict([rand(2, 5, 3), rand(3, 2)])


def test_summary_lists_layers_shapes_params_and_paths():
    model, lstm, gru, dense = _stack()
    lines = []
    model.summary(print_fn=lines.append)
    text = "\n".join(lines)
    assert "lstm (LSTM)" in text and "(None, None, 4)" in text and "fused cpu kernel" in text
    assert f"{sum(w.size for w in lstm):,}" in text
    total = sum(w.size for w in lstm + gru + dense)
    assert f"Total params: {total:,}" in text and "Keras 3 semantics" in text
    lines.clear()
    model.summary(print_fn=lines.append, backend="cuda")
    assert "fused cuda kernels" in "\n".join(lines)


def test_layers_expose_name_class_config_and_weights():
    model, lstm, gru, dense = _stack()
    assert [(layer.name, layer.class_name) for layer in model.layers] == [
        ("lstm", "LSTM"), ("gru", "GRU"), ("td", "TimeDistributed")]
    assert model.layers[0].config["units"] == 4
    for got, want in zip(model.layers[0].weights, lstm):
        np.testing.assert_array_equal(got, want)
    assert model.count_params() == sum(w.size for w in lstm + gru + dense)
    with pytest.raises(ValueError, match="no layer 'nope'"):
        model.get_layer("nope")


def test_loaded_weights_are_fixed_and_the_recurrent_cells_frozen():
    """A loaded model's weights are read-only (an in-place change raises instead of being
    ignored by the frozen cells, which keep their own copies and their packed weights)."""
    model, *_ = _stack()
    x = rand(2, 5, 3)
    before = model.predict(x)
    lstm = model.get_layer("lstm")
    with pytest.raises(ValueError, match="read-only"):
        lstm.weights[0][0, 0] = 1.0
    cells = list(lstm._cells.values())
    assert cells and all(cell.frozen for cell in cells)
    np.testing.assert_array_equal(model.predict(x), before)


def test_backend_option():
    model, *_ = _stack()
    with pytest.raises(ValueError, match="unknown backend"):
        model.backend = "no_such_backend"
    with pytest.raises(TypeError):
        Model(model.spec, backend=3)
    model.backend = "cpu"
    np.testing.assert_array_equal(model.predict(rand(2, 5, 3)).shape, (2, 5, 2))
    if not gpukb.backend_available("cuda"):
        model.backend = "cuda"
        with pytest.raises((RuntimeError, TypeError)):
            model.predict(rand(2, 5, 3))


def test_shared_recurrent_layers_have_no_carried_states():
    weights = rnn_weights("GRU", 3, 2)
    model = build([("a", (None, 5, 3), "float32"), ("b", (None, 5, 3), "float32")],
                  [L("g", "GRU", {"units": 2}, weights), L("add", "Add")],
                  [("g", [R("a")], {}), ("g", [R("b")], {}), ("add", [[R("g", 0), R("g", 1)]], {})], [R("add")])
    a, b = rand(2, 5, 3), rand(2, 5, 3)
    expected = ref_rnn("GRU", a, weights, 2)[0] + ref_rnn("GRU", b, weights, 2)[0]
    np.testing.assert_allclose(model.predict([a, b]), expected, **TOL)
    with pytest.raises(ValueError, match="called more than once"):
        model.predict([a, b], return_states=True)


def test_model_takes_a_spec():
    with pytest.raises(TypeError, match="ModelSpec"):
        Model({"layers": []})


def test_load_model_errors_for_files_that_are_not_models(tmp_path):
    path = tmp_path / "notes.keras"
    path.write_text("not a model")
    with pytest.raises(ModelFileError):
        load_model(path)


def test_importing_gpukb_keeps_h5py_and_scipy_unloaded(tmp_path):
    code = ("import sys, gpukb\n"
            "assert callable(gpukb.keras.load_model)\n"
            "print(sorted(m for m in ('h5py', 'scipy', 'numba', 'zipfile') if m in sys.modules))")
    result = run_python(code, home=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "h5py" not in result.stdout and "scipy" not in result.stdout and "numba" not in result.stdout


def test_mask_is_dropped_where_keras_drops_it_and_kept_where_it_keeps_it():
    """Dense and Dropout keep the mask (supports_masking), Flatten drops it."""
    weights = rnn_weights("SimpleRNN", 2, 2)
    kept = chain((None, 6, 3), [L("m", "Masking"), L("d", "Dense", {"units": 2}, [rand(3, 2), rand(2)]),
                                L("drop", "Dropout", {"rate": 0.5}),
                                L("r", "SimpleRNN", {"units": 2}, weights)])
    x = masked_input(3)
    dense = np.where(MASK[..., None], x, 0) @ kept.get_layer("d").weights[0] + kept.get_layer("d").weights[1]
    np.testing.assert_allclose(kept.predict(x), ref_rnn("SimpleRNN", dense, weights, 2, mask=MASK)[0], **TOL)
    assert sys.modules.get("gpukb.keras") is gpukb.keras


@pytest.mark.parametrize("keras_major", [2, 3])
def test_stateful_layer_with_a_graph_initial_state(keras_major):
    """tf.keras keeps a stateful layer's recorded states once any is non-zero, even when the
    graph gives an initial state (``RNN._process_inputs``); Keras 3 always takes the given one."""
    weights = rnn_weights("GRU", 3, 2)
    inputs = [("x", (2, 4, 3), "float32"), ("h", (2, 2), "float32")]
    layers = [L("g", "GRU", {"units": 2, "stateful": True}, weights)]
    node = ("g", [[R("x"), R("h")]], {}) if keras_major == 2 else ("g", [R("x")], {"initial_state": [R("h")]})
    model = build(inputs, layers, [node], [R("g")], keras_major=keras_major)
    x1, x2, h = rand(2, 4, 3), rand(2, 4, 3), rand(2, 2)
    first, (kept,) = ref_rnn("GRU", x1, weights, 2, states=[h])
    np.testing.assert_allclose(model.predict([x1, h]), first, **TOL)
    second = ref_rnn("GRU", x2, weights, 2, states=[kept if keras_major == 2 else h])[0]
    np.testing.assert_allclose(model.predict([x2, h]), second, **TOL)


LOADABLE = [(case, writer) for case, writer in CASES if not MANIFEST["cases"][case]["expect_error"]]


@pytest.mark.parametrize("case, writer", LOADABLE, ids=[f"{c}-{w}" for c, w in LOADABLE])
def test_a_loaded_model_pickles_and_predicts_the_same(case, writer):
    """pickle (a process pool's arguments, a cache) and copy.deepcopy of a loaded model that has
    predicted: the copy predicts the same bits (its cells are rebuilt from their weights)."""
    import copy
    import pickle

    info = MANIFEST["cases"][case]
    model = load_model(FIXTURES / info["files"][writer]["file"])
    x = _inputs(np.load(FIXTURES / info["npz"]))
    x = x if len(x) > 1 else x[0]
    want = model.predict(x)
    for twin in (pickle.loads(pickle.dumps(model)), copy.deepcopy(model)):
        if info["stateful"]:
            model.reset_states()
            twin.reset_states()
            want = model.predict(x)
        got = twin.predict(x)
        for g, w in zip(got if isinstance(got, list) else [got],
                        want if isinstance(want, list) else [want]):
            np.testing.assert_array_equal(g, w)
