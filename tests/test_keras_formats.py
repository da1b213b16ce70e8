"""gpukb.keras._formats.read_model: every saved-model fixture read into a ModelSpec that matches
what Keras recorded about it (manifest.json), the three writers of a case agreeing, the dialect
rules on hand-built files, and every bad file refused with a ModelFileError naming the path.

The fixtures are written by real Keras (tests/fixtures/keras_models/make_keras_models.py); the
hand-built files here are written with zipfile/h5py only, so no test needs Keras.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import zipfile

import h5py
import numpy as np
import pytest

from gpukb.keras import ModelFileError
from gpukb.keras._formats import read_model
from gpukb.keras._spec import TensorRef

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "keras_models")
with open(os.path.join(FIXTURES, "manifest.json")) as _manifest:
    MANIFEST = json.load(_manifest)["cases"]
FORMATS = {"keras3": ("keras_v3", 3), "tf_keras_h5": ("h5", 2), "tf_keras_keras": ("tf_keras_v3", 2)}
FILES = [(case, writer) for case, entry in MANIFEST.items() for writer in entry["files"]]


def fixture_path(case: str, writer: str) -> str:
    return os.path.join(FIXTURES, MANIFEST[case]["files"][writer]["file"])


def manifest_entry(case: str, writer: str) -> dict:
    """What the manifest records about one file: its writer's entry, with what Keras recorded
    about the model that writer saved (layers, inputs, outputs)."""
    info = dict(MANIFEST[case]["files"][writer])
    info.update(MANIFEST[case].get("models", {}).get(info.get("model"), {}))
    return info


def ref_list(ref: TensorRef) -> list:
    return [ref.layer, ref.node_index, ref.tensor_index]


def refs_in(value) -> list[TensorRef]:
    if isinstance(value, TensorRef):
        return [value]
    if isinstance(value, (list, tuple)):
        return [r for v in value for r in refs_in(v)]
    if isinstance(value, dict):
        return [r for v in value.values() for r in refs_in(v)]
    return []


def model_layers(spec):
    """The layers Keras lists in ``model.layers``: no graph operations, no Sequential input."""
    return [layer for layer in spec.layers.values() if not layer.class_name.startswith("ops.")
            and not (spec.class_name == "Sequential" and layer.class_name == "InputLayer")]


# --------------------------------------------------------------------------------------------
# Every fixture against what Keras recorded
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("case,writer", FILES, ids=[f"{c}-{w}" for c, w in FILES])
def test_fixture_matches_manifest(case, writer):
    info = manifest_entry(case, writer)
    spec = read_model(fixture_path(case, writer))
    assert (spec.file_format, spec.keras_major) == FORMATS[writer]
    assert spec.keras_version == info["keras_version"]
    layers = model_layers(spec)
    assert [(l.name, l.class_name) for l in layers] == \
        [(l["name"], l["class_name"]) for l in info["layers"]]
    for layer, recorded in zip(layers, info["layers"]):
        assert sum(w.size for w in layer.weights) == recorded["count_params"], layer.name
        calls = [n for n in spec.nodes if n.layer == layer.name]
        if layer.class_name != "InputLayer":
            assert [n.node_index for n in calls] == list(range(len(recorded["output_shapes"])))
    assert [ref_list(r) for r in spec.inputs] == info["inputs"]
    assert [ref_list(r) for r in spec.outputs] == info["outputs"]
    assert len(spec.input_shapes) == len(spec.inputs) == len(spec.input_dtypes)
    # every node reads model inputs or nodes listed before it
    seen = set()
    for node in spec.nodes:
        for ref in refs_in([node.args, node.kwargs]):
            assert spec.layers[ref.layer].class_name == "InputLayer" or \
                (ref.layer, ref.node_index) in seen, (node, ref)
        seen.add((node.layer, node.node_index))
    for layer in spec.layers.values():       # dtypes are plain strings, at every nesting
        assert isinstance(layer.config.get("dtype", "float32"), str), layer.name
        for key in ("layer", "backward_layer"):
            if isinstance(layer.config.get(key), dict):
                assert set(layer.config[key]) == {"class_name", "config"}
                assert isinstance(layer.config[key]["config"].get("dtype", "float32"), str)


@pytest.mark.parametrize("case", [c for c, e in MANIFEST.items() if len(e["files"]) > 1])
def test_writers_of_a_case_store_the_same_weights(case):
    """The fixture generator sets identical weights in Keras 3 and tf_keras: the readers return
    them identically (same order, shapes and values) from all three formats."""
    specs = [read_model(fixture_path(case, w)) for w in MANIFEST[case]["files"]]
    first = {l.name: l.weights for l in model_layers(specs[0])}
    for spec in specs[1:]:
        other = {l.name: l.weights for l in model_layers(spec)}
        assert other.keys() == first.keys()
        for name, weights in first.items():
            assert len(other[name]) == len(weights), name
            for a, b in zip(weights, other[name]):
                np.testing.assert_array_equal(a, b, err_msg=name)


def test_sequential_becomes_a_chain():
    for writer in MANIFEST["seq_lstm"]["files"]:
        spec = read_model(fixture_path("seq_lstm", writer))
        assert [(n.layer, n.node_index, n.args, n.kwargs) for n in spec.nodes] == [
            ("lstm", 0, [TensorRef("x")], {}), ("dense", 0, [TensorRef("lstm")], {})]
        assert spec.input_shapes == [(None, 7, 3)] and spec.input_dtypes == ["float32"]
        lstm = spec.layers["lstm"]
        assert [w.shape for w in lstm.weights] == [(3, 20), (5, 20), (20,)]
        assert lstm.index == 1


def test_sequential_without_input_layer_gets_one():
    """The edited tf_keras .h5 has no InputLayer (Keras <= 2.3): one is synthesized from the
    first layer's batch_input_shape, named as tf.keras names it."""
    spec = read_model(fixture_path("seq_no_input_layer", "tf_keras_h5"))
    first = next(iter(spec.layers.values()))
    assert (first.name, first.class_name, first.index) == ("lstm_input", "InputLayer", 0)
    assert spec.inputs == [TensorRef("lstm_input")]
    assert spec.nodes[0].args == [TensorRef("lstm_input")]
    assert spec.input_shapes == [tuple(first.config["batch_input_shape"])]


def test_keras3_mask_operations_are_marked_and_passed_as_mask():
    """Keras 3 records the mask of Masking as NotEqual/Any operations, passed on as mask=."""
    spec = read_model(fixture_path("go_backwards_masked", "keras3"))
    classes = {l.name: l.class_name for l in spec.layers.values()}
    assert classes["not_equal"] == "ops.NotEqual" and classes["any"] == "ops.Any"
    lstm = next(n for n in spec.nodes if n.layer == "lstm_back")
    assert lstm.kwargs["mask"] == TensorRef("any")
    not_equal = next(n for n in spec.nodes if n.layer == "not_equal")
    assert not_equal.args == [TensorRef("x"), 0.0]


def test_tf_keras_initial_state_is_part_of_the_call_list():
    """tf.keras folds RNN initial states into the input list: args=[[x, h, c]]; Keras 3 keeps
    them in kwargs."""
    for writer in ("tf_keras_h5", "tf_keras_keras"):
        spec = read_model(fixture_path("encoder_decoder_initial_state", writer))
        decoder = next(n for n in spec.nodes if n.layer == "decoder")
        assert decoder.args == [[TensorRef("decoder_in"), TensorRef("encoder", 0, 1),
                                 TensorRef("encoder", 0, 2)]]
        assert decoder.kwargs == {}
    spec = read_model(fixture_path("encoder_decoder_initial_state", "keras3"))
    decoder = next(n for n in spec.nodes if n.layer == "decoder")
    assert decoder.args == [TensorRef("decoder_in")]
    assert decoder.kwargs["initial_state"] == [TensorRef("encoder", 0, 1),
                                               TensorRef("encoder", 0, 2)]


def saved_config(path: str) -> dict:
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            return json.loads(z.read("config.json"))
    with h5py.File(path, "r") as f:
        return json.loads(f.attrs["model_config"])


def test_lambda_layer_is_read_but_never_run():
    """A Lambda's serialized code stays in its config exactly as saved (refused later)."""
    for writer in MANIFEST["bad_lambda"]["files"]:
        path = fixture_path("bad_lambda", writer)
        spec = read_model(path)
        saved = next(e for e in saved_config(path)["config"]["layers"] if e["config"].get("name")
                     == "lambda")
        assert spec.layers["lambda"].class_name == "Lambda"
        assert spec.layers["lambda"].config["function"] == saved["config"]["function"]


# --------------------------------------------------------------------------------------------
# Hand-built files: dialect rules
# --------------------------------------------------------------------------------------------

def entry(name, class_name, inbound=(), **config):
    return {"class_name": class_name, "name": name, "config": {"name": name, **config},
            "inbound_nodes": list(inbound)}


def write_h5(path, config, weights=None, *, keras_version="2.21.0", layer_names=None):
    """A legacy .h5 model: root attributes and model_weights as hdf5_format.py writes them."""
    weights = weights or {}
    with h5py.File(path, "w") as f:
        f.attrs["model_config"] = json.dumps(config)
        f.attrs["keras_version"] = keras_version
        f.attrs["backend"] = "tensorflow"
        group = f.create_group("model_weights")
        names = layer_names if layer_names is not None else \
            [e["name"] for e in config["config"]["layers"]]
        group.attrs["layer_names"] = np.array([n.encode() for n in names])
        for name in names:
            g = group.create_group(name)
            arrays = weights.get(name, [])
            g.attrs["weight_names"] = np.array([w.encode() for w, _ in arrays])
            for weight_name, value in arrays:
                g.create_dataset(weight_name, data=value)
    return str(path)


def write_keras(path, config, weights=None, *, keras_version="3.15.1", extra=None):
    """A .keras zip: config.json, metadata.json and model.weights.h5 (``{h5 path: array}``)."""
    with zipfile.ZipFile(path, "w") as z:
        if keras_version is not None:
            z.writestr("metadata.json", json.dumps({"keras_version": keras_version}))
        if config is not None:
            z.writestr("config.json", json.dumps(config))
        if weights is not None:
            buffer = io.BytesIO()
            with h5py.File(buffer, "w") as f:
                for key, value in weights.items():
                    f[key] = value         # an array, or a link
            z.writestr("model.weights.h5", buffer.getvalue())
        for name, data in (extra or {}).items():
            z.writestr(name, data)
    return str(path)


def functional(layers, inputs, outputs, class_name="Functional"):
    return {"class_name": class_name, "config": {"name": "m", "layers": layers,
                                                "input_layers": inputs, "output_layers": outputs}}


def input_entry(name, shape, keras_major=2):
    key = "batch_input_shape" if keras_major < 3 else "batch_shape"
    return entry(name, "InputLayer", **{key: shape, "dtype": "float32"})


def tf_call(*leaves, kwargs=None):
    return [[name, node, tensor, kwargs or {}] for name, node, tensor in leaves]


def test_tf_keras_dialect(tmp_path):
    """tf.keras nodes: one tensor -> args=[r]; several -> args=[[...]]; the first entry's
    kwargs, with [layer, node, tensor] lists as TensorRefs; constants; nested models' unsaved
    first node subtracted; nodes ordered by dependency, not config order."""
    nested_seq = {"name": "sub", "layers": [input_entry("sub_in", [None, 2])]}
    nested_fun = {"name": "fun", "layers": [], "input_layers": [], "output_layers": []}
    layers = [
        input_entry("x", [None, 2]), input_entry("h", [None, 2]),
        # "shared" is called on x, then on the output of "late", listed after it
        entry("shared", "Dense", [tf_call(("x", 0, 0)), tf_call(("late", 0, 0))], units=2),
        entry("late", "Activation", [tf_call(("shared", 0, 0))], activation="tanh"),
        entry("add", "Add", [tf_call(("x", 0, 0), ("h", 0, 0))]),
        entry("rnn", "SimpleRNN", [tf_call(("x", 0, 0), kwargs={
            "initial_state": [["h", 0, 0]], "training": False})], units=2),
        entry("const", "Multiply", [[["x", 0, 0, {}], ["_CONSTANT_VALUE", -1, 2.0, {}]]]),
        {"class_name": "Sequential", "name": "sub", "config": nested_seq,
         "inbound_nodes": [tf_call(("x", 0, 0)), tf_call(("add", 0, 0))]},
        {"class_name": "Functional", "name": "fun", "config": nested_fun,
         "inbound_nodes": [tf_call(("sub", 2, 0))]},
    ]
    config = functional(layers, [["x", 0, 0], ["h", 0, 0]], [["fun", 1, 0], ["shared", 1, 0]])
    weights = {"shared": [("shared/kernel:0", np.ones((2, 2), np.float32)),
                          ("shared/bias:0", np.zeros(2, np.float32))],
               "rnn": [(f"rnn/simple_rnn_cell/{n}:0", np.ones(s, np.float32))
                       for n, s in (("kernel", (2, 2)), ("recurrent_kernel", (2, 2)),
                                    ("bias", (2,)))]}
    spec = read_model(write_h5(tmp_path / "m.h5", config, weights))
    nodes = {(n.layer, n.node_index): n for n in spec.nodes}
    order = [(n.layer, n.node_index) for n in spec.nodes]
    assert order.index(("late", 0)) < order.index(("shared", 1))
    assert nodes["shared", 0].args == [TensorRef("x")]
    assert nodes["shared", 1].args == [TensorRef("late")]
    assert nodes["add", 0].args == [[TensorRef("x"), TensorRef("h")]]
    assert nodes["rnn", 0].args == [TensorRef("x")]
    assert nodes["rnn", 0].kwargs == {"initial_state": [TensorRef("h")], "training": False}
    assert nodes["const", 0].args == [[TensorRef("x"), 2.0]]
    # the nested Sequential (with an InputLayer) and Functional count an unsaved first node
    assert nodes["fun", 0].args == [TensorRef("sub", 1)]
    assert spec.outputs == [TensorRef("fun", 0), TensorRef("shared", 1)]
    assert [w.shape for w in spec.layers["rnn"].weights] == [(2, 2), (2, 2), (2,)]
    assert spec.input_shapes == [(None, 2), (None, 2)]


def test_keras3_dialect(tmp_path):
    """Keras 3 nodes: __keras_tensor__ dicts, constants as arrays, operations marked 'ops.',
    a nested Functional's first node subtracted only in output_layers; weights found by class
    name in model.layers order (operations and names do not count)."""
    def kt(name, node=0, tensor=0):
        return {"class_name": "__keras_tensor__",
                "config": {"shape": [None, 2], "dtype": "float32",
                           "keras_history": [name, node, tensor]}}

    def call(*args, **kwargs):
        return {"args": list(args), "kwargs": kwargs}

    nested_fun = {"name": "fun", "layers": [], "input_layers": [], "output_layers": []}
    layers = [
        dict(input_entry("x", [None, 2], 3), module="keras.layers"),
        {"module": "keras.src.ops.numpy", "class_name": "Add", "registered_name": "Add",
         "name": "op_add", "config": {"name": "op_add"}, "inbound_nodes": [call(
             kt("x"), {"class_name": "__numpy__",
                       "config": {"value": [1.0, 2.0], "dtype": "float32"}})]},
        dict(entry("d2", "Dense", [call(kt("op_add"), mask=None)], units=2, dtype={
            "module": "keras", "class_name": "DTypePolicy", "config": {"name": "float32"}}),
            module="keras.layers"),
        dict(entry("d1", "Dense", [call(kt("d2"))], units=2), module="keras.layers"),
        {"module": "keras.src.models.functional", "class_name": "Functional", "name": "fun",
         "config": nested_fun, "inbound_nodes": [call(kt("d1")), call(kt("d1"))]},
    ]
    config = functional(layers, ["x", 0, 0], [["fun", 2, 0], ["d2", 0, 0]])
    k = {name: np.full(shape, v, np.float32) for name, shape, v in
         (("k2", (2, 2), 2.0), ("b2", (2,), 2.5), ("k1", (2, 2), 1.0), ("b1", (2,), 1.5))}
    weights = {"layers/dense/vars/0": k["k2"], "layers/dense/vars/1": k["b2"],
               "layers/dense_1/vars/0": k["k1"], "layers/dense_1/vars/1": k["b1"],
               "optimizer/vars/0": np.zeros(3, np.float32)}
    spec = read_model(write_keras(tmp_path / "m.keras", config, weights))
    assert spec.layers["op_add"].class_name == "ops.Add"
    op = next(n for n in spec.nodes if n.layer == "op_add")
    assert op.args[0] == TensorRef("x")
    np.testing.assert_array_equal(op.args[1], np.array([1.0, 2.0], np.float32))
    assert spec.layers["d2"].config["dtype"] == "float32"
    assert next(n for n in spec.nodes if n.layer == "d2").kwargs == {"mask": None}
    # "dense" is the first Dense of model.layers (d2), whatever the layers' names
    np.testing.assert_array_equal(spec.layers["d2"].weights[0], k["k2"])
    np.testing.assert_array_equal(spec.layers["d1"].weights[1], k["b1"])
    assert [n.args for n in spec.nodes if n.layer == "fun"] == [[TensorRef("d1")]] * 2
    assert spec.outputs == [TensorRef("fun", 1), TensorRef("d2")]
    assert spec.inputs == [TensorRef("x")] and spec.input_shapes == [(None, 2)]


def test_keras3_h5_operations_are_the_entries_not_in_layer_names(tmp_path):
    """Keras 3 .h5 files store operations without a module: not in layer_names, they are
    operations."""
    layers = [input_entry("x", [None, 2], 3),
              entry("not_equal", "NotEqual", [{"args": [{"class_name": "__keras_tensor__",
                    "config": {"keras_history": ["x", 0, 0]}}, 0.0], "kwargs": {}}])]
    config = functional(layers, [["x", 0, 0]], [["not_equal", 0, 0]])
    path = write_h5(tmp_path / "m.h5", config, keras_version="3.15.1", layer_names=["x"])
    spec = read_model(path)
    assert spec.keras_major == 3 and spec.layers["not_equal"].class_name == "ops.NotEqual"


def test_bidirectional_h5_weights_forward_first(tmp_path):
    """A .h5 lists trainable before non-trainable weights: with the forward half frozen the
    backward half comes first in the file; the reader restores forward-then-backward."""
    names = ["kernel", "recurrent_kernel", "bias"]
    shapes = [(2, 3), (3, 3), (3,)]
    stored = [(f"bi/backward_rnn/simple_rnn_cell/{n}:0", np.full(s, 2.0, np.float32))
              for n, s in zip(names, shapes)] + \
             [(f"bi/forward_rnn/simple_rnn_cell/{n}:0", np.full(s, 1.0, np.float32))
              for n, s in zip(names, shapes)]
    rnn = {"class_name": "SimpleRNN", "config": {"name": "rnn", "units": 3, "dtype": "float32"}}
    layers = [input_entry("x", [None, 4, 2]),
              entry("bi", "Bidirectional", [tf_call(("x", 0, 0))], layer=rnn)]
    spec = read_model(write_h5(tmp_path / "m.h5", functional(layers, [["x", 0, 0]],
                                                             [["bi", 0, 0]]), {"bi": stored}))
    weights = spec.layers["bi"].weights
    assert [float(w.flat[0]) for w in weights] == [1.0] * 3 + [2.0] * 3
    assert [w.shape for w in weights] == shapes * 2


# --------------------------------------------------------------------------------------------
# Bad files
# --------------------------------------------------------------------------------------------

def refused(path, *words):
    with pytest.raises(ModelFileError) as info:
        read_model(path)
    message = str(info.value)
    assert str(path) in message
    for word in words:
        assert word in message, message
    return message


def test_not_a_path():
    with pytest.raises(TypeError, match="path must be a str or os.PathLike"):
        read_model(42)


def test_missing_file_and_directory(tmp_path):
    refused(tmp_path / "nope.keras", "no such file")
    refused(tmp_path, "is a directory")


def test_not_a_model_file(tmp_path):
    (tmp_path / "empty.keras").write_bytes(b"")
    refused(tmp_path / "empty.keras", "empty")
    (tmp_path / "text.h5").write_text("hello, this is not a model\n" * 100)
    refused(tmp_path / "text.h5", "neither a zip archive", "nor an HDF5 file")


def test_zip_that_is_not_a_keras_model(tmp_path):
    refused(write_keras(tmp_path / "a.keras", None, extra={"hello.txt": "hi"}),
            "without config.json")
    refused(write_keras(tmp_path / "b.keras", {"class_name": "Sequential"}, keras_version=None),
            "no metadata.json")
    with zipfile.ZipFile(tmp_path / "c.keras", "w") as z:
        z.writestr("metadata.json", json.dumps({"keras_version": "3.15.1"}))
        z.writestr("config.json", "{not json")
    refused(tmp_path / "c.keras", "config.json is not valid JSON")
    subclassed = {"class_name": "MyModel", "config": {"name": "m"}}
    refused(write_keras(tmp_path / "d.keras", subclassed, {}), "subclassed model")


def test_unknown_keras_versions(tmp_path):
    config = functional([input_entry("x", [None, 2])], [["x", 0, 0]], [["x", 0, 0]])
    refused(write_keras(tmp_path / "a.keras", config, {}, keras_version="1.2.2"),
            "Keras '1.2.2'")
    refused(write_keras(tmp_path / "b.keras", config, {}, keras_version=""),
            "records no keras_version")
    refused(write_h5(tmp_path / "c.h5", config, keras_version="4.0.0"), "Keras '4.0.0'")


def test_zip_weight_problems(tmp_path):
    source = fixture_path("seq_lstm", "keras3")
    with zipfile.ZipFile(source) as z:
        config = json.loads(z.read("config.json"))
    refused(write_keras(tmp_path / "a.keras", config, None), "no model.weights.h5")
    refused(write_keras(tmp_path / "b.keras", config, None,
                        extra={"model.weights.npz": b"x"}), "never unpickles")
    # the Dense layer's group is missing: its config needs a kernel and a bias
    only_lstm = {f"layers/lstm/cell/vars/{i}": np.zeros(s, np.float32)
                 for i, s in enumerate([(3, 20), (5, 20), (20,)])}
    refused(write_keras(tmp_path / "c.keras", config, only_lstm),
            "layer 'dense' (Dense, position 2)", "needs 2 weight(s) (kernel, bias)",
            "stores 0")


def test_h5_weight_problems(tmp_path):
    path = tmp_path / "m.h5"
    shutil.copy(fixture_path("seq_lstm", "tf_keras_h5"), path)
    with h5py.File(path, "r+") as f:
        del f["model_weights/lstm"]
    refused(path, "layer 'lstm' (LSTM", "needs 3 weight(s)", "stores 0")
    with h5py.File(path, "r+") as f:
        del f["model_weights"]
    refused(path, "no model_weights group")


def test_h5_weight_stored_outside_the_file_is_refused(tmp_path):
    path = tmp_path / "m.h5"
    shutil.copy(fixture_path("seq_lstm", "tf_keras_h5"), path)
    with h5py.File(path, "r+") as f:
        group = f["model_weights/dense/dense"]
        del group["bias:0"]
        group["bias:0"] = h5py.ExternalLink("/etc/passwd", "/x")
    refused(path, "link to another file")


def test_keras_weights_linked_to_another_file_are_refused(tmp_path):
    with zipfile.ZipFile(fixture_path("seq_lstm", "keras3")) as z:
        config = json.loads(z.read("config.json"))
    linked = {"layers/lstm": h5py.ExternalLink("/etc/passwd", "/x")}
    refused(write_keras(tmp_path / "m.keras", config, linked), "links 'lstm' to another file")


def test_h5_without_model_config(tmp_path):
    with h5py.File(tmp_path / "weights.h5", "w") as f:    # what save_weights writes
        f.attrs["layer_names"] = np.array([b"dense"])
        f.attrs["keras_version"] = "2.21.0"
        f.create_group("dense").attrs["weight_names"] = np.array([b"dense/kernel:0"])
    refused(tmp_path / "weights.h5", "weights-only", "model.save()")
    with h5py.File(tmp_path / "data.h5", "w") as f:
        f["x"] = np.arange(3)
    refused(tmp_path / "data.h5", "without a model_config attribute")


@pytest.mark.parametrize("writer", ["keras3", "tf_keras_h5"])
def test_truncated_files(tmp_path, writer):
    data = open(fixture_path("seq_lstm", writer), "rb").read()
    path = tmp_path / ("cut.keras" if writer == "keras3" else "cut.h5")
    path.write_bytes(data[: len(data) // 2])
    refused(path, "truncated or corrupt")


def test_broken_graphs(tmp_path):
    x = input_entry("x", [None, 2])
    unknown = functional([x, entry("a", "Activation", [tf_call(("ghost", 0, 0))])],
                         [["x", 0, 0]], [["a", 0, 0]])
    refused(write_h5(tmp_path / "a.h5", unknown), "unknown layer 'ghost'")
    cycle = functional([x, entry("a", "Add", [tf_call(("x", 0, 0), ("b", 0, 0))]),
                        entry("b", "Activation", [tf_call(("a", 0, 0))])],
                       [["x", 0, 0]], [["b", 0, 0]])
    refused(write_h5(tmp_path / "b.h5", cycle), "cycle")
    missing_call = functional([x, entry("a", "Activation", [tf_call(("x", 0, 0))])],
                              [["x", 0, 0]], [["a", 3, 0]])
    refused(write_h5(tmp_path / "c.h5", missing_call), "call 3 of layer 'a'")
    duplicate = functional([x, entry("x", "Activation")], [["x", 0, 0]], [["x", 0, 0]])
    refused(write_h5(tmp_path / "d.h5", duplicate, layer_names=["x"]),
            "two layers are named 'x'")
    unbuilt = {"class_name": "Sequential", "config": {"name": "s", "layers": [
        {"class_name": "Dense", "config": {"name": "d", "units": 2}}]}}
    refused(write_h5(tmp_path / "e.h5", unbuilt, layer_names=["d"]), "no input shape")
