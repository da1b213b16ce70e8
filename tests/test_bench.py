"""``gpukb bench`` and the gpukb.bench package: arguments, timing, table, JSON, plot, peers."""

import dataclasses
import importlib.util
import io
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import gpukb
from gpukb import cli
from gpukb.bench import implementations, model_peers, models, peers, report, runner, workloads
from gpukb.bench.workloads import Size

from helpers import bench

TINY = ["--sizes", "2x3x2x3", "--repeats", "1", "--budget", "0.01", "--no-progress"]

needs_onnxruntime = pytest.mark.skipif(
    importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("onnx") is None,
    reason="the onnxruntime peer needs onnxruntime and onnx: pip install onnx onnxruntime",
)


def shim(tmp_path, module, body):
    """A folder holding a fake top-level ``module``, to put first on PYTHONPATH."""
    folder = tmp_path / "shim"
    (folder / module).mkdir(parents=True)
    (folder / module / "__init__.py").write_text(body)
    return folder


# --------------------------------------------------------------------------------------------
# Argument errors: all raised before anything runs
# --------------------------------------------------------------------------------------------

@pytest.fixture
def nothing_runs(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("benchmarking started despite an argument error")

    monkeypatch.setattr(runner, "run_isolated", refuse)


@pytest.mark.parametrize("argv, message", [
    (["--repeats", "0"], "--repeats must be at least 1"),
    (["--budget", "-1"], "--budget must be a positive number"),
    (["--budget", "nan"], "--budget must be a positive number"),
    (["--sizes", "32x100x64"], "expected four positive integers"),
    (["--sizes", "0x1x1x1"], "B must be a positive integer"),
    (["--peers", "tensorflowz"], "--peers: unknown 'tensorflowz'; known: torch, jax, keras3"),
    (["--backends", "tpu"], "--backends: unknown 'tpu'"),
    (["--workloads", "lstm,rnn"], "--workloads: unknown 'rnn'"),
    (["--backends", "none", "--peers", "none"], "leaves nothing to run"),
    (["--json", "/no/such/folder/out.json"], "the folder /no/such/folder does not exist"),
    (["--plot", "out.txt"], "must end in .png"),
])
def test_argument_errors(argv, message, capsys, nothing_runs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = bench(argv, capsys)
    assert code == 2
    assert message in err
    assert out == ""


def test_json_and_plot_must_not_be_folders(capsys, nothing_runs, tmp_path):
    code, _, err = bench(["--json", str(tmp_path)], capsys)
    assert code == 2 and "is a folder" in err


def test_plot_without_matplotlib_fails_before_benchmarking(capsys, nothing_runs, tmp_path,
                                                           monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # "import matplotlib" now raises
    code, out, err = bench(["--plot", str(tmp_path / "out.png")], capsys)
    assert code == 2
    assert "pip install matplotlib" in err and "gpukb[plot]" in err
    assert not (tmp_path / "out.png").exists()


def test_unavailable_backend_named_explicitly_is_an_error(capsys, nothing_runs):
    from gpukb import _dispatch

    records = {r.name: r for r in _dispatch.backend_records()}
    if records["cuda"].availability:
        pytest.skip("the cuda backend is available here")
    code, _, err = bench(["--backends", "cuda"], capsys)
    assert code == 2
    assert "backend 'cuda' is not available here" in err


# --------------------------------------------------------------------------------------------
# Runs
# --------------------------------------------------------------------------------------------

def test_tiny_run_prints_the_cpu_row_and_writes_json(capsys, tmp_path):
    path = tmp_path / "bench.json"
    code, out, err = bench([*TINY, "--peers", "none", "--json", str(path)], capsys)
    assert code == 0, err
    lines = out.splitlines()
    header = next(line for line in lines if line.startswith("workload"))
    for column in report.COLUMNS:
        assert column in header
    rows = [line for line in lines if "gpukb[cpu]" in line and "B=2 T=3" in line]
    assert [row.split()[0] for row in rows] == ["lstm", "gru"]

    doc = json.loads(path.read_text())
    assert doc["schema"] == report.SCHEMA
    machine = doc["machine"]
    for key in ("cpu", "cores", "usable_cores", "platform", "versions", "date"):
        assert key in machine
    for library in ("numpy", "numba", "gpukb", "python"):
        assert machine["versions"][library]
    assert doc["settings"]["sizes"] == [{"B": 2, "T": 3, "D": 2, "H": 3}]
    assert doc["settings"]["repeats"] == 1
    assert {i["key"] for i in doc["implementations"]} >= {"gpukb[cpu]"}
    cpu = next(i for i in doc["implementations"] if i["key"] == "gpukb[cpu]")
    assert "thread" in cpu["threads"]
    results = {(r["workload"], r["key"]): r for r in doc["results"]}
    for workload, gates in (("lstm", 4), ("gru", 3)):
        r = results[(workload, "gpukb[cpu]")]
        assert r["status"] == "ok" and r["kind"] == "gpukb"
        assert r["size"] == {"B": 2, "T": 3, "D": 2, "H": 3}
        assert r["flops"] == 2 * 2 * 3 * (2 + 3) * gates * 3
        assert r["median_ms"] > 0 and r["repeats"] == 1 and r["first_call_ms"] > 0
        assert r["gflops"] == pytest.approx(r["flops"] / (r["median_ms"] / 1e3) / 1e9)
        assert r["relative_error"] < 1e-5
        assert r["ratio_to_fastest_peer"] is None  # no peer ran
    skipped = {s["name"]: s["reason"] for s in doc["skipped"]}
    if "cuda" in {b for b in _backends_unavailable()}:
        assert "gpukb[cuda]" in skipped


def _backends_unavailable():
    from gpukb import _dispatch

    return [r.name for r in _dispatch.backend_records() if not r.availability]


def test_missing_peer_is_listed_as_skipped(capsys, tmp_path, monkeypatch):
    folder = shim(tmp_path, "torch",
                  "raise ModuleNotFoundError(\"No module named 'torch'\", name='torch')\n")
    monkeypatch.setenv("PYTHONPATH", str(folder))  # the worker processes see no torch
    path = tmp_path / "bench.json"
    code, out, err = bench([*TINY, "--workloads", "lstm", "--peers", "torch", "--json",
                            str(path)], capsys)
    assert code == 0, err
    assert "skipped: torch: torch is not installed (pip install torch)" in out
    assert "gpukb[cpu]" in out
    doc = json.loads(path.read_text())
    reason = "torch is not installed (pip install torch)"
    assert {"name": "torch", "reason": reason} in doc["skipped"]
    assert all(r["key"] != "torch" for r in doc["results"])


def test_a_peer_that_kills_its_worker_is_skipped_not_fatal(capsys, tmp_path, monkeypatch):
    folder = shim(tmp_path, "jax", "import os\nos._exit(3)\n")
    monkeypatch.setenv("PYTHONPATH", str(folder))
    code, out, err = bench([*TINY, "--workloads", "gru", "--peers", "jax"], capsys)
    assert code == 0, err
    assert "skipped: jax: worker process exited with code 3" in out
    assert "gpukb[cpu]" in out


def test_plot_is_written(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "bench.png"
    code, _, err = bench([*TINY, "--peers", "none", "--plot", str(path)], capsys)
    assert code == 0, err
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_quick_runs_in_under_a_minute_with_every_installed_peer(tmp_path):
    """The real ``gpukb bench --quick`` (the README's command), as a user runs it."""
    path = tmp_path / "quick.json"
    exe = os.path.join(os.path.dirname(sys.executable), "gpukb")
    command = [exe] if os.path.exists(exe) else [sys.executable, "-m", "gpukb"]
    start = time.perf_counter()
    result = subprocess.run([*command, "bench", "--quick", "--json", str(path)],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path)
    elapsed = time.perf_counter() - start
    assert result.returncode == 0, result.stdout + result.stderr
    assert elapsed < 60, f"gpukb bench --quick took {elapsed:.0f} s"
    assert "gpukb[cpu]" in result.stdout
    assert "] " in result.stderr and "done" in result.stderr  # the progress bar
    doc = json.loads(path.read_text())
    sizes = [s.as_dict() for s in workloads.QUICK_SIZES]
    assert doc["settings"]["sizes"] == sizes
    ran = {(r["key"], r["workload"], tuple(r["size"].values())) for r in doc["results"]
           if r["status"] == "ok"}
    for workload in ("lstm", "gru"):
        for size in workloads.QUICK_SIZES:
            assert ("gpukb[cpu]", workload, (size.B, size.T, size.D, size.H)) in ran
    skipped = {s["name"] for s in doc["skipped"]}
    for key, module in (("torch", "torch"), ("jax", "jax"), ("keras3", "keras"),
                        ("onnxruntime", "onnxruntime")):
        if importlib.util.find_spec(module) is not None and (
                key != "onnxruntime" or importlib.util.find_spec("onnx") is not None):
            assert key not in skipped, doc["skipped"]
            assert len([r for r in doc["results"] if r["key"] == key]) == 6
            assert key in doc["machine"]["versions"] or module in doc["machine"]["versions"]
        else:
            assert key in skipped
    for r in doc["results"]:
        if r["status"] == "ok":
            assert r["relative_error"] < 1e-4, r


# --------------------------------------------------------------------------------------------
# Pieces
# --------------------------------------------------------------------------------------------

def test_flop_counts():
    size = Size(32, 100, 64, 128)
    assert workloads.flops("lstm", size) == 2 * 32 * 100 * (64 + 128) * 4 * 128
    assert workloads.flops("gru", size) == 2 * 32 * 100 * (64 + 128) * 3 * 128
    assert workloads.FULL_SIZES == (Size(32, 100, 64, 128), Size(1, 1000, 32, 64),
                                    Size(256, 50, 128, 256))


def test_size_parsing():
    assert Size.parse("32x100x64x128") == Size(32, 100, 64, 128)
    assert Size.parse("1,2,3,4").key == "1x2x3x4"
    with pytest.raises(ValueError, match="four positive integers"):
        Size.parse("1x2x3")
    with pytest.raises(ValueError, match="positive integer"):
        Size.parse("1x0x3x4")


@pytest.mark.parametrize("workload", ["lstm", "gru", "simple_rnn"])
def test_reference_matches_gpukb_cells_in_float64(workload):
    """The independent float64 reference and gpukb's Keras cells agree."""
    import gpukb

    problem = workloads.make_problem(workload, Size(3, 7, 4, 5), dtype=np.float64)
    outputs = gpukb.rnn(problem.cell(), problem.x, problem.states)[1]
    np.testing.assert_allclose(problem.reference, outputs, rtol=1e-10, atol=1e-12)
    assert problem.relative_error(outputs) < 1e-12


def test_masks():
    assert workloads.make_mask("none", 4, 6) is None
    padded = workloads.make_mask("right_padded", 50, 6)
    assert padded.shape == (50, 6) and padded[:, 0].all()
    assert (np.diff(padded.astype(int), axis=1) <= 0).all()  # valid prefix, then padding
    random = workloads.make_mask("random", 50, 6)
    assert random.dtype == bool and 0 < random.mean() < 1


def test_measure_excludes_the_warm_up_and_respects_the_budget():
    calls = []
    ticks = iter(range(1000))

    def clock():
        return float(next(ticks))

    def run():
        calls.append(1)
        return "out"

    first, timing = runner.measure(run, repeats=50, budget_s=5, clock=clock)
    assert first == "out"
    # 2 warm-up calls, then timed calls until the budget: every timed call lasts 1 tick here.
    assert len(calls) == 2 + len(timing.times_s)
    assert timing.first_call_s == 1.0
    assert 1 <= len(timing.times_s) < 50
    assert all(t == 1.0 for t in timing.times_s)
    _, timing = runner.measure(run, repeats=3, budget_s=1e9)
    assert len(timing.times_s) == 3
    with pytest.raises(ValueError):
        runner.measure(run, repeats=0, budget_s=1)


def _result(key, kind, median, workload="lstm", size=Size(1, 2, 3, 4)):
    return runner.Result(workload, size, key, key, kind, 100, median_s=median, min_s=median,
                         repeats=1, first_call_s=median, relative_error=0.0)


def test_ratios_are_to_the_fastest_peer_per_problem():
    rows = [_result("gpukb[cpu]", "gpukb", 1.0), _result("torch", "peer", 2.0),
            _result("jax", "peer", 4.0), _result("gpukb[cpu]", "gpukb", 3.0, workload="gru")]
    runner.add_ratios(rows)
    assert [r.ratio_to_fastest_peer for r in rows] == [0.5, 1.0, 2.0, None]
    table = report.format_table(rows, skipped=[("tf.keras", "tf_keras is not installed")],
                                threads={"torch": "2"})
    assert "0.50x" in table and "skipped: tf.keras: tf_keras is not installed" in table
    assert "threads: torch: 2" in table


def test_error_rows_are_reported_below_the_table():
    bad = runner.Result("gru", Size(1, 2, 3, 4), "torch nn.GRU", "torch", "peer", 10,
                        status="error", error="RuntimeError: boom")
    table = report.format_table([_result("gpukb[cpu]", "gpukb", 1.0, workload="gru"), bad])
    assert "error: torch nn.GRU, gru B=1 T=2 D=3 H=4: RuntimeError: boom" in table


def test_progress_bar_lines_and_in_place():
    stream = io.StringIO()
    bar = runner.ProgressBar(2, stream=stream)
    bar.show("first")
    bar.advance()
    bar.show("second")
    bar.close()
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("[") and "0/2" in lines[0] and lines[0].endswith("first")
    assert "1/2" in lines[1] and "2/2" in lines[2] and lines[2].endswith("done")

    class Tty(io.StringIO):
        def isatty(self):
            return True

    tty = Tty()
    bar = runner.ProgressBar(1, stream=tty)
    bar.show("x")
    bar.close()
    assert tty.getvalue().startswith("\r[") and tty.getvalue().count("\n") == 1

    quiet = io.StringIO()
    bar = runner.ProgressBar(1, stream=quiet, enabled=False)
    bar.show("x")
    bar.close()
    assert quiet.getvalue() == ""


def test_wire_format_round_trips():
    r = _result("torch", "peer", 1.5)
    r.ratio_to_fastest_peer = 1.0
    back = runner.result_from_wire(json.loads(json.dumps(runner.result_to_wire(r))))
    assert back == r


def test_gpu_work_is_synchronised_inside_the_timed_call(monkeypatch):
    """``cuda`` (any backend computing with CuPy) waits on CuPy's current stream in ``run``."""
    import types

    from gpukb.bench import implementations

    waits = []
    stream = types.SimpleNamespace(synchronize=lambda: waits.append("stream"))
    fake_cupy = types.ModuleType("cupy")
    fake_cupy.cuda = types.SimpleNamespace(get_current_stream=lambda: stream)
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy)
    gpu_like = types.SimpleNamespace(xp=fake_cupy)
    implementations.synchronizer(gpu_like)()
    assert waits == ["stream"]
    own = types.SimpleNamespace(xp=np, synchronize=lambda: waits.append("own"))
    implementations.synchronizer(own)()
    assert waits == ["stream", "own"]

    # GpukbBackend.run: rnn, then the wait, every call.
    order = []
    monkeypatch.setattr(implementations, "synchronizer",
                        lambda backend: (lambda: order.append("sync")))
    import gpukb

    real_rnn = gpukb.rnn
    monkeypatch.setattr(gpukb, "rnn", lambda *a, **k: (order.append("rnn"), real_rnn(*a, **k))[1])
    cpu = implementations.GpukbBackend("cpu")
    cpu.prepare()
    runnable = cpu.build(workloads.make_problem("lstm", Size(2, 3, 2, 3)))
    runnable.run()
    runnable.run()
    assert order == ["rnn", "sync", "rnn", "sync"]


def test_simulated_cuda_backend_is_skipped(monkeypatch):
    import types

    from gpukb import _dispatch
    from gpukb.bench import implementations

    record = types.SimpleNamespace(name="cuda", availability=True, distribution="gpukb",
                                   backend=types.SimpleNamespace(simulated=True))
    monkeypatch.setattr(_dispatch, "backend_records", lambda: [record])
    with pytest.raises(implementations.Skipped, match="CUDA simulator"):
        implementations.GpukbBackend("cuda").prepare()


def test_workers_import_the_installed_gpukb_not_the_working_folder(tmp_path, monkeypatch):
    """A folder holding a bare gpukb/ (like a source checkout) must not shadow the installed one."""
    import subprocess
    import sys

    fake = tmp_path / "gpukb"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ImportError('shadowed by the working folder')\n")
    result = subprocess.run(
        [sys.executable, "-c", "import sys; sys.path.remove(''); from gpukb.cli import main; "
         "sys.exit(main(['bench', '--sizes', '1x2x1x2', '--workloads', 'lstm', '--peers', 'none', "
         "'--backends', 'cpu', '--repeats', '1', '--no-progress']))"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "shadowed" not in result.stdout + result.stderr
    row = next(line for line in result.stdout.splitlines() if line.startswith("lstm"))
    assert "gpukb[cpu]" in row and float(row.split()[-1]) < 1e-5  # a measured row, not "error"


# --------------------------------------------------------------------------------------------
# Plugin backends that only run the generic loop
# --------------------------------------------------------------------------------------------

class _GenericOnly(gpukb.Backend):
    name = "generic"
    array_types = ("numpy:ndarray",)

    def _load_xp(self):
        return np


def _record(name, backend):
    import types

    return types.SimpleNamespace(name=name, backend=backend, distribution="some-plugin",
                                 availability=True, entry_point="some_plugin:Backend")


def test_only_backends_with_their_own_kernels_run_by_default():
    from gpukb import _dispatch

    records = {r.name: r for r in _dispatch.backend_records()}
    assert not implementations.runs_generic_loop_only(records["cpu"].backend)
    assert not implementations.runs_generic_loop_only(records["cuda"].backend)
    assert implementations.runs_generic_loop_only(_GenericOnly())

    names, left_out = implementations.default_backends(
        [records["cpu"], _record("generic", _GenericOnly())])
    assert names == ["cpu"]
    [(key, reason)] = left_out
    assert key == "gpukb[generic]"
    assert "generic Python loop" in reason and "--backends generic" in reason


class _TakesOver(gpukb.Backend):
    name = "takes_over"
    array_types = ("numpy:ndarray",)

    def _load_xp(self):
        return np

    def rnn(self, step_function, inputs, initial_states, **options):
        return gpukb.rnn(step_function, inputs, initial_states, backend="cpu", **options)


def test_a_plugin_that_takes_calls_over_is_left_out_by_default():
    """Such a plugin (the dask one) runs gpukb's own kernels elsewhere: no kernel of its own."""
    from gpukb import _dispatch

    records = {r.name: r for r in _dispatch.backend_records()}
    assert not implementations.takes_calls_over(records["cpu"])   # gpukb's own backend
    names, left_out = implementations.default_backends(
        [records["cpu"], _record("takes_over", _TakesOver())])
    assert names == ["cpu"]
    [(key, reason)] = left_out
    assert key == "gpukb[takes_over]" and "--backends takes_over" in reason


def test_a_generic_loop_backend_is_labelled_so(monkeypatch):
    from gpukb import _dispatch

    record = _record("generic", _GenericOnly())
    monkeypatch.setattr(_dispatch, "backend_records", lambda: [record])
    implementation = implementations.GpukbBackend("generic")
    implementation.prepare()
    assert implementation.label("lstm") == "gpukb[generic] generic loop"


def test_the_torch_plugin_is_left_out_by_default_and_labelled_when_chosen(capsys):
    """The plugin runs gpukb's Python loop on torch tensors: its time is no gpukb kernel's."""
    pytest.importorskip("gpukb_torch", reason="needs plugins/gpukb-torch installed")
    from gpukb import _dispatch

    if not {r.name: r for r in _dispatch.backend_records()}["torch"].availability:
        pytest.skip("the torch backend is not available here")
    tiny = [*TINY, "--workloads", "lstm", "--peers", "none"]
    code, out, err = bench(tiny, capsys)
    assert code == 0, err
    assert not [line for line in out.splitlines() if line.startswith("lstm") and "torch" in line]
    assert "skipped: gpukb[torch]: not run by default" in out
    code, out, err = bench([*tiny, "--backends", "torch"], capsys)
    assert code == 0, err
    row = next(line for line in out.splitlines() if line.startswith("lstm"))
    assert "gpukb[torch] generic loop" in row and float(row.split()[-1]) < 1e-5


# --------------------------------------------------------------------------------------------
# The peers' install line
# --------------------------------------------------------------------------------------------

def _fake_run(monkeypatch, ready):
    def run_isolated(keys, workloads, sizes, **kwargs):
        return [], ready, []

    monkeypatch.setattr(runner, "run_isolated", run_isolated)


@pytest.mark.parametrize("argv, ready, says_install", [
    ([], [], True),                                        # no peer is installed
    (["--peers", "torch"], [], True),
    ([], [implementations.Implementation(key="torch", kind="peer")], False),
    (["--peers", "none"], [], False),                      # peers not wanted
])
def test_install_line_when_no_peer_ran(argv, ready, says_install, capsys, monkeypatch):
    _fake_run(monkeypatch, ready)
    code, out, err = bench(["--no-progress", *argv], capsys)
    assert code == 0, err
    lines = [line for line in out.splitlines() if peers.INSTALL_PEERS in line]
    assert len(lines) == (1 if says_install else 0), out


def test_install_line_lists_the_peers_extra():
    """``python3 -m pip install ...`` (printed by gpukb bench) installs the ``peers`` extra."""
    import tomllib

    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    if not pyproject.is_file():
        pytest.skip("no pyproject.toml: running from an installed copy")
    extras = tomllib.loads(pyproject.read_text())["project"]["optional-dependencies"]
    assert "peers" in extras, "pyproject.toml has no 'peers' extra"

    def name(requirement):
        return re.match(r"[A-Za-z0-9._-]+", requirement).group(0).lower().replace("_", "-")

    assert sorted(map(name, extras["peers"])) == sorted(peers.PEER_PACKAGES)
    assert peers.INSTALL_PEERS == "python3 -m pip install " + " ".join(peers.PEER_PACKAGES)


# --------------------------------------------------------------------------------------------
# onnxruntime
# --------------------------------------------------------------------------------------------

@needs_onnxruntime
@pytest.mark.parametrize("workload", ["lstm", "gru"])
def test_onnxruntime_matches_the_float64_reference(workload):
    """Gate order, transposes and biases of the ONNX model: the float32 result is within
    float32 rounding (~1e-7) of the reference, with non-zero initial states."""
    problem = workloads.make_problem(workload, Size(3, 9, 4, 5))
    rng = np.random.default_rng(1)
    states = {name: rng.standard_normal(getattr(problem, name).shape).astype(np.float32)
              for name in ("h0", "c0") if getattr(problem, name) is not None}
    problem = dataclasses.replace(problem, **states)
    peer = peers.OnnxRuntimePeer()
    peer.prepare()
    runnable = peer.build(problem)
    error = problem.relative_error(runnable.to_numpy(runnable.run()))
    assert error < 2e-6, error


@needs_onnxruntime
def test_onnxruntime_peer_in_a_bench_run(capsys):
    code, out, err = bench([*TINY, "--backends", "none", "--peers", "onnxruntime"], capsys)
    assert code == 0, err
    rows = [line for line in out.splitlines() if "B=2 T=3" in line]
    assert [row.split()[0] for row in rows] == ["lstm", "gru"]
    assert "onnxruntime LSTM" in rows[0] and "onnxruntime GRU" in rows[1]
    for row in rows:
        assert float(row.split()[-1]) < 1e-5 and row.split()[-2] == "1.00x"
    threads = next(line for line in out.splitlines() if line.startswith("threads:"))
    assert f"onnxruntime: {os.cpu_count()} intra-op" in threads
    assert "intra_op_num_threads" in threads


def test_missing_onnxruntime_is_skipped_with_what_to_install(capsys, tmp_path, monkeypatch):
    folder = shim(tmp_path, "onnxruntime", "raise ModuleNotFoundError(\"No module named "
                  "'onnxruntime'\", name='onnxruntime')\n")
    monkeypatch.setenv("PYTHONPATH", str(folder))
    code, out, err = bench([*TINY, "--workloads", "lstm", "--peers", "onnxruntime"], capsys)
    assert code == 0, err
    assert ("skipped: onnxruntime: onnxruntime is not installed (pip install onnx onnxruntime)"
            in out)


# --------------------------------------------------------------------------------------------
# gpukb bench --model: a saved Keras model against Keras itself
# --------------------------------------------------------------------------------------------

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "keras_models"
EMBEDDING_MODEL = FIXTURES / "embedding_mask_lstm.keras3.keras"   # tokens (B, 7), vocabulary 12
QUICK_MODEL = ["--quick", "--repeats", "1", "--budget", "0.01", "--no-progress"]
#: Every library the --model peers import, hidden from the worker processes by ``missing``.
PEER_MODULES = ("keras", "jax", "torch", "tensorflow", "tf_keras")


def missing(tmp_path, modules):
    """A PYTHONPATH folder in which importing each of ``modules`` fails as if not installed."""
    folder = tmp_path / "missing"
    for module in modules:
        (folder / module).mkdir(parents=True)
        (folder / module / "__init__.py").write_text(
            f"raise ModuleNotFoundError(\"No module named '{module}'\", name='{module}')\n")
    return folder


def fake_keras(tmp_path, predict_body):
    """A PYTHONPATH folder holding a fake Keras 3 whose loaded model's ``predict(x)`` (and
    ``model(x)``) returns ``predict_body`` evaluated with ``x`` and ``np`` in scope."""
    return shim(tmp_path, "keras", f"""
import os
import types

import numpy as np

__version__ = "3.99.0"
backend = types.SimpleNamespace(backend=lambda: os.environ["KERAS_BACKEND"])
ops = types.SimpleNamespace(convert_to_numpy=np.asarray)


class _Model:
    def predict(self, x, batch_size=None, verbose=0):
        return {predict_body}

    def __call__(self, x, training=False):
        return self.predict(x)


saving = types.SimpleNamespace(load_model=lambda path, compile=False: _Model())
""")


def model_rows(out):
    """The table rows of a --model run: (batch, call, implementation, rest of the cells)."""
    rows = []
    for line in out.splitlines():
        match = re.match(r"\s*(\d+)\s+(predict|model\(x\))\s+(\S+)\s*(.*)$", line)
        if match:
            rows.append((int(match.group(1)), match.group(2), match.group(3),
                         match.group(4).split()))
    return rows


def test_model_quick_times_gpukb_and_lists_the_missing_peers(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(missing(tmp_path, PEER_MODULES)))
    path = tmp_path / "model.json"
    code, out, err = bench(["--model", str(EMBEDDING_MODEL), *QUICK_MODEL, "--json", str(path)],
                           capsys)
    assert code == 0, err
    assert "model: " in out and "'embedding_mask_lstm'" in out
    assert "tokens (B, 7) int32 ids in [0, 11], zero-padded" in out
    rows = model_rows(out)
    assert [(b, call, impl) for b, call, impl, _ in rows] == [
        (1, "predict", "gpukb[cpu]"), (1, "model(x)", "gpukb[cpu]"),
        (8, "predict", "gpukb[cpu]"), (8, "model(x)", "gpukb[cpu]")]
    for *_, cells in rows:
        assert float(cells[0]) > 0 and float(cells[-1]) == 0.0   # ms, max rel. diff
    for line in ("skipped: keras3[jax]: jax is not installed (pip install keras jax)",
                 "skipped: keras3[torch]: torch is not installed (pip install keras torch)",
                 "skipped: keras3[numpy]: keras is not installed (pip install keras)",
                 "skipped: keras3[tensorflow]: tensorflow is not installed "
                 "(pip install keras tensorflow)",
                 "skipped: tf.keras: tensorflow is not installed (pip install tensorflow tf_keras)",
                 f"To install the peers: {model_peers.INSTALL_MODEL_PEERS}"):
        assert line in out, out

    doc = json.loads(path.read_text())
    assert doc["schema"] == report.MODEL_SCHEMA
    assert doc["settings"]["batch_sizes"] == [1, 8]
    assert doc["settings"]["inputs"] == [{"name": "tokens", "shape": ["B", 7], "dtype": "int32",
                                          "vocabulary": 12, "mask_zero": True}]
    assert {r["key"] for r in doc["results"]} == {"gpukb[cpu]"}
    for r in doc["results"]:
        assert r["status"] == "ok" and r["median_ms"] > 0 and r["max_rel_diff"] == 0.0
    assert {s["name"] for s in doc["skipped"]} >= set(model_peers.MODEL_PEER_NAMES)


def test_model_inputs_respect_the_embedding_range_and_mask_zero():
    model = gpukb.keras.load_model(EMBEDDING_MODEL)
    [plan] = models.plan_inputs(model)
    assert (plan.shape, plan.dtype, plan.vocabulary, plan.mask_zero) == ((7,), "int32", 12, True)
    [ids] = models.make_inputs([plan], 200)
    assert ids.shape == (200, 7) and ids.dtype == np.int32
    assert ids.min() == 0 and ids.max() == 11
    valid = ids != 0
    lengths = valid.sum(axis=1)
    # zero only as right padding, at least half of each row kept, some rows padded
    assert (valid == (np.arange(7) < lengths[:, None])).all()
    assert lengths.min() >= 3 and (lengths < 7).any() and (lengths == 7).any()
    np.testing.assert_array_equal(ids, models.make_inputs([plan], 200)[0])  # seeded

    no_mask = gpukb.keras.load_model(FIXTURES / "embedding_no_mask.keras3.keras")
    [plan] = models.plan_inputs(no_mask)
    assert not plan.mask_zero and plan.vocabulary == no_mask.get_layer("embedding").input_dim
    [ids] = models.make_inputs([plan], 200)
    assert ids.min() == 0 and ids.max() == plan.vocabulary - 1   # 0 is an ordinary id here

    floats = gpukb.keras.load_model(FIXTURES / "functional_two_in_two_out.keras3.keras")
    x, tokens = models.make_inputs(models.plan_inputs(floats), 5)
    assert x.shape == (5, 7, 2) and x.dtype == np.float32 and x.std() > 0.5
    assert tokens.shape == (5, 7) and tokens.max() < floats.get_layer("embedding").input_dim


def _open_time_axis_copy(tmp_path) -> Path:
    """seq_lstm's Keras 3 file with its input's time axis left open: (None, None, 3)."""
    import zipfile

    source, target = FIXTURES / "seq_lstm.keras3.keras", tmp_path / "open_t.keras"
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for item in old.infolist():
            data = old.read(item)
            if item.filename == "config.json":
                data = data.replace(b'"batch_shape": [null, 7, 3]', b'"batch_shape": [null, null, 3]')
                assert b"[null, null, 3]" in data
            new.writestr(item, data)
    return target


def test_model_time_steps_from_the_file_or_steps(capsys, tmp_path, monkeypatch):
    open_t = gpukb.keras.load_model(_open_time_axis_copy(tmp_path))
    assert [p.shape for p in models.plan_inputs(open_t)] == [(models.DEFAULT_STEPS, 3)]
    assert [p.shape for p in models.plan_inputs(open_t, 40)] == [(40, 3)]
    fixed = gpukb.keras.load_model(FIXTURES / "seq_lstm.keras3.keras")
    assert [p.shape for p in models.plan_inputs(fixed)] == [(7, 3)]
    assert [p.shape for p in models.plan_inputs(fixed, 7)] == [(7, 3)]

    monkeypatch.setenv("PYTHONPATH", str(missing(tmp_path, PEER_MODULES)))
    path = tmp_path / "open.json"
    code, out, err = bench(["--model", str(tmp_path / "open_t.keras"), *QUICK_MODEL,
                            "--steps", "40", "--batch-sizes", "3", "--json", str(path)], capsys)
    assert code == 0, err
    doc = json.loads(path.read_text())
    assert doc["settings"]["inputs"][0]["shape"] == ["B", 40, 3]
    assert [(r["batch"], r["status"]) for r in doc["results"]] == [(3, "ok"), (3, "ok")]


def test_a_peer_whose_outputs_disagree_is_wrong_and_never_the_fastest(capsys, tmp_path,
                                                                       monkeypatch):
    """A fake Keras 3 that answers instantly with constant outputs: faster than gpukb, wrong."""
    folder = fake_keras(tmp_path, "np.full((len(x), 3), 1 / 3, np.float32)")
    monkeypatch.setenv("PYTHONPATH", str(folder))
    path = tmp_path / "wrong.json"
    code, out, err = bench(["--model", str(EMBEDDING_MODEL), *QUICK_MODEL, "--batch-sizes", "4",
                            "--peers", "keras3[numpy]", "--json", str(path)], capsys)
    assert code == 0, err
    rows = {(call, impl): cells for _, call, impl, cells in model_rows(out)}
    for call in ("predict", "model(x)"):
        peer = rows[(call, "keras3[numpy]")]
        assert peer[-1] == "WRONG" and float(peer[-2]) > models.TOLERANCE
        assert len(rows[(call, "gpukb[cpu]")]) == 2   # ms and diff: no ratio, no peer counts
    assert ("wrong: keras3[numpy], B=4 predict: its outputs differ from gpukb's: max rel. diff"
            in out)
    doc = json.loads(path.read_text())
    peer = [r for r in doc["results"] if r["key"] == "keras3[numpy]"]
    assert [r["status"] for r in peer] == ["wrong", "wrong"]
    assert all(r["ratio_to_fastest_peer"] is None for r in doc["results"])


def test_a_peer_with_the_right_outputs_is_compared(capsys, tmp_path, monkeypatch):
    """The same fake Keras, answering with gpukb's own outputs: a correct peer gets a ratio."""
    model = gpukb.keras.load_model(EMBEDDING_MODEL)
    np.save(tmp_path / "ref.npy", model.predict(models.make_inputs(models.plan_inputs(model), 4)[0]))
    folder = fake_keras(tmp_path, f"np.load({str(tmp_path / 'ref.npy')!r})")
    monkeypatch.setenv("PYTHONPATH", str(folder))
    code, out, err = bench(["--model", str(EMBEDDING_MODEL), *QUICK_MODEL, "--batch-sizes", "4",
                            "--peers", "keras3[numpy]"], capsys)
    assert code == 0, err
    rows = {(call, impl): cells for _, call, impl, cells in model_rows(out)}
    assert rows[("predict", "keras3[numpy]")][1:] == ["1.00x", "0.0e+00"]
    assert rows[("predict", "gpukb[cpu]")][1].endswith("x")


def test_a_peer_that_dies_while_timing_is_an_error_row(capsys, tmp_path, monkeypatch):
    folder = fake_keras(tmp_path, "os._exit(3)")
    monkeypatch.setenv("PYTHONPATH", str(folder))
    code, out, err = bench(["--model", str(EMBEDDING_MODEL), *QUICK_MODEL, "--batch-sizes", "2",
                            "--peers", "keras3[numpy]"], capsys)
    assert code == 0, err
    assert "error: keras3[numpy], B=2 predict: worker process exited with code 3" in out
    assert [impl for _, _, impl, _ in model_rows(out)] == ["gpukb[cpu]", "keras3[numpy]",
                                                            "gpukb[cpu]"]


def test_ratios_skip_wrong_peers():
    def row(key, kind, median, status="ok"):
        return models.ModelResult(8, "predict", key, key, kind, status=status, median_s=median)

    rows = [row("gpukb[cpu]", "gpukb", 2.0), row("fast", "peer", 1.0, status="wrong"),
            row("slow", "peer", 4.0)]
    runner.add_ratios(rows)
    assert [r.ratio_to_fastest_peer for r in rows] == [0.5, None, 1.0]


@pytest.mark.parametrize("argv, message", [
    (["--model", "no/such.keras"], "--model: "),
    (["--model", str(FIXTURES / "bad_lambda.keras3.keras")], "Lambda"),
    (["--model", str(FIXTURES / "stateful_lstm_gru.keras3.keras")], "are stateful"),
    (["--model", str(EMBEDDING_MODEL), "--steps", "256"],
     "input 'tokens' of the model has a fixed number of time steps, 7"),
    (["--model", str(EMBEDDING_MODEL), "--steps", "0"], "--steps must be a positive integer"),
    (["--model", str(EMBEDDING_MODEL), "--batch-sizes", "1,0"], "positive integers"),
    (["--model", str(EMBEDDING_MODEL), "--peers", "torch"],
     "--peers: unknown 'torch'; known: keras3, keras3[jax]"),
    (["--model", str(EMBEDDING_MODEL), "--sizes", "1x2x3x4"], "--sizes does not apply with --model"),
    (["--model", str(EMBEDDING_MODEL), "--plot", "x.png"], "--plot does not apply with --model"),
    (["--model", str(EMBEDDING_MODEL), "--backends", "none", "--peers", "none"],
     "leaves nothing to run"),
    (["--steps", "10"], "--steps only applies with --model"),
    (["--batch-sizes", "1"], "--batch-sizes only applies with --model"),
])
def test_model_argument_errors(argv, message, capsys, tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("benchmarking started despite an argument error")

    monkeypatch.setattr(runner, "run_workers", refuse)
    monkeypatch.setattr(runner, "run_isolated", refuse)
    monkeypatch.chdir(tmp_path)
    code, out, err = bench(argv, capsys)
    assert code == 2
    assert message in err
    assert out == ""


def test_model_with_a_fixed_batch_size_defaults_to_it():
    model = gpukb.keras.load_model(FIXTURES / "stateful_lstm_gru.keras3.keras")
    plans = models.plan_inputs(model)
    assert plans[0].batch == 4
    models.check_batch_sizes(plans, [4])
    with pytest.raises(ValueError, match="fixed batch size, 4; got 1, 8"):
        models.check_batch_sizes(plans, [1, 4, 8])


def test_max_relative_difference():
    ref = [np.array([[1.0, -2.0]]), np.array([0.5])]
    assert models.max_relative_difference(ref, ref) == 0.0
    assert models.max_relative_difference([np.array([[1.0, -2.2]]), np.array([0.5])],
                                          ref) == pytest.approx(0.1)
    assert models.max_relative_difference([np.array([[np.nan, -2.0]]), ref[1]], ref) == np.inf
    with pytest.raises(ValueError, match="1 output"):
        models.max_relative_difference(ref[:1], ref)
    with pytest.raises(ValueError, match="shape"):
        models.max_relative_difference([ref[0].T, ref[1]], ref)


needs_keras3 = pytest.mark.skipif(
    importlib.util.find_spec("keras") is None,
    reason="the Keras 3 peer needs keras: pip install keras (or: "
           f"{model_peers.INSTALL_MODEL_PEERS})")
needs_tf_keras = pytest.mark.skipif(
    importlib.util.find_spec("tf_keras") is None or importlib.util.find_spec("tensorflow") is None,
    reason="the tf.keras peer needs tensorflow and tf_keras: pip install tensorflow tf_keras")


@needs_keras3
def test_keras3_numpy_backend_runs_the_same_model(capsys):
    code, out, err = bench(["--model", str(EMBEDDING_MODEL), *QUICK_MODEL, "--batch-sizes", "4",
                            "--peers", "keras3[numpy]", "--backends", "cpu"], capsys)
    assert code == 0, err
    rows = {(call, impl): cells for _, call, impl, cells in model_rows(out)}
    assert set(rows) == {(c, i) for c in ("predict", "model(x)")
                         for i in ("gpukb[cpu]", "keras3[numpy]")}
    for call in ("predict", "model(x)"):
        ms, ratio, diff = rows[(call, "keras3[numpy]")]
        assert ratio == "1.00x" and float(diff) < 1e-5


@pytest.mark.slow   # importing TensorFlow takes most of its ~20 s
@needs_tf_keras
def test_tf_keras_runs_a_tf_keras_file_and_keras3_is_skipped_on_it(capsys):
    code, out, err = bench(["--model", str(FIXTURES / "embedding_mask_lstm.tf_keras.h5"),
                            *QUICK_MODEL, "--batch-sizes", "4", "--peers", "tf.keras,keras3[numpy]",
                            "--backends", "cpu"], capsys)
    assert code == 0, err
    rows = {(call, impl): cells for _, call, impl, cells in model_rows(out)}
    assert float(rows[("predict", "tf.keras")][-1]) < 1e-5
    if importlib.util.find_spec("keras") is not None:
        assert "skipped: keras3[numpy]: Keras 3." in out and "cannot load this file" in out


def test_backward_bench_times_gradients_checked_against_float64(capsys):
    """gpukb bench --backward: each implementation in its own process, its input gradient
    compared with the float64 reference (a wrong gradient would show a large rel. error)."""
    from gpukb.bench import backward
    from gpukb.bench.workloads import Size

    results = backward.run((Size(2, 5, 3, 4),),
                           implementations=("gpukb[cpu]", "gpukb_torch", "torch"),
                           repeats=2, budget=0.05, peak=1000.0)
    table = capsys.readouterr().out
    assert {(r.workload, r.key) for r in results} >= {("lstm", "gpukb[cpu]"), ("gru", "gpukb[cpu]")}
    if importlib.util.find_spec("gpukb_torch") is not None:   # the drop-in, as torch's row
        assert {r.key for r in results} >= {"gpukb_torch", "torch"}
        assert "gpukb_torch.LSTM (drop-in) + backward" in table
    else:
        assert "skipped: gpukb_torch" in table
    for r in results:
        assert r.status == "ok", r.error
        assert r.relative_error < 1e-5 and r.median_s > 0
    assert "rel. error" in table and "gpukb.rnn_vjp + pullback" in table
    assert "FMA peak: 1000 GFLOP/s float32" in table
    line = next(ln for ln in table.splitlines() if "gpukb.rnn_vjp + pullback" in ln)
    share = f"{100 * results[0].gflops / 1000.0:.0f}%" if results[0].key == "gpukb[cpu]" else None
    assert share is None or share in line.split()   # each rate as a share of the peak given


@pytest.mark.parametrize("argv,message", [
    (["--peers", "torch"], "--peers does not apply with --backward"),
    (["--dtypes", "float64"], "--dtypes does not apply with --backward"),
    (["--rounds", "2"], "--rounds does not apply with --backward"),
    (["--workloads", "simple_rnn"], "--workloads"),
    (["--sizes", "2x3"], "--sizes"),
])
def test_backward_bench_refuses_what_does_not_apply(argv, message, capsys, monkeypatch):
    from gpukb.bench import backward

    monkeypatch.setattr(backward, "run", lambda *a, **k: pytest.fail("ran despite a bad option"))
    code, _, err = bench(["--backward", *argv], capsys)
    assert code == 2 and message in err


def test_backward_bench_passes_sizes_and_workloads_and_writes_json(tmp_path, capsys, monkeypatch):
    from gpukb.bench import backward

    calls = []

    def fake_run(sizes, workloads, **kw):
        calls.append((sizes, workloads, kw))
        result = runner.Result(workload="gru", size=sizes[0], implementation="gpukb[cpu]: x",
                               key="gpukb[cpu]", kind="gpukb", flops=1.0, status="ok")
        result.median_s, result.relative_error = 0.002, 1e-7
        return [result]

    monkeypatch.setattr(backward, "run", fake_run)
    monkeypatch.setattr("gpukb.bench.fma_peak.fma_gflops", lambda *a, **k: 432.0)
    out = tmp_path / "bw.json"
    code, _, err = bench(["--backward", "--sizes", "3x4x5x6", "--workloads", "gru",
                          "--repeats", "4", "--json", str(out)], capsys)
    assert code == 0, err
    (sizes, workloads, kw), = calls
    assert sizes == (Size(3, 4, 5, 6),) and workloads == ("gru",) and kw["repeats"] == 4
    assert kw["peak"] == 432.0
    doc = json.loads(out.read_text())
    assert doc["schema"] == backward.SCHEMA and doc["settings"]["workloads"] == ["gru"]
    assert doc["settings"]["fma_peak_gflops_float32"] == 432.0
    assert doc["results"][0]["workload"] == "gru" and doc["results"][0]["median_ms"] == 2.0


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_fma_peak_loop_does_every_multiply_add(dtype):
    """The peak's loop really runs its multiply-adds (none folded away): with a <- a * 1 + 1 from
    a = i, after n iterations each lane of accumulator i holds i + n, exactly; and a rate comes
    out of several threads at once."""
    from gpukb.bench import fma_peak

    lanes = fma_peak.lanes(dtype)
    assert lanes * {"float32": 4, "float64": 8}[dtype] in (16, 32, 64)
    for n in (0, 1, 1000):
        want = lanes * sum(i + n for i in range(fma_peak.ACCUMULATORS))
        assert fma_peak.run_loop(dtype, n, 1.0, 1.0) == want
    assert fma_peak.run_loop(dtype, 3, 2.0, 0.0) == lanes * sum(
        i * 8 for i in range(fma_peak.ACCUMULATORS))   # a * 2**3
    assert fma_peak.fma_gflops(dtype, threads=2, seconds=0.01) > 0


def test_fma_peak_command_checks_its_arguments(capsys):
    from gpukb.bench import fma_peak

    for argv, message in ((["--threads", "0"], "--threads must be at least 1"),
                          (["--seconds", "0"], "--seconds must be positive")):
        with pytest.raises(SystemExit) as exit_info:
            fma_peak.main(argv)
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
    with pytest.raises(ValueError, match="threads must be at least 1"):
        fma_peak.fma_gflops("float32", threads=0)
