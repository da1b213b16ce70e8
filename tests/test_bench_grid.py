"""``gpukb bench --grid`` (gpukb/bench/grid.py, heatmap.py), and the SimpleRNN and float64
workloads of ``gpukb bench``: the plan and its T rule, argument errors, rounds, the JSON document,
the Markdown and PNG heat maps, the peers in float64 (or n/a), and one real tiny grid run."""

import dataclasses
import importlib.util
import json
import subprocess
import types

import numpy as np
import pytest

from gpukb.bench import grid, heatmap, peers, report, runner, workloads
from gpukb.bench.workloads import Size

from helpers import bench

has = {name: importlib.util.find_spec(name) is not None
       for name in ("onnxruntime", "onnx", "torch", "matplotlib")}
needs_onnxruntime = pytest.mark.skipif(not (has["onnxruntime"] and has["onnx"]),
                                       reason="needs onnxruntime and onnx")
needs_torch = pytest.mark.skipif(not has["torch"], reason="needs torch")


# --------------------------------------------------------------------------------------------
# The plan
# --------------------------------------------------------------------------------------------

def test_the_full_plan_is_3_workloads_x_2_dtypes_x_6_batches_x_6_units_with_d_half_h():
    points = grid.plan()
    assert len(points) == 3 * 2 * 6 * 6 == len(set(points))
    assert {p.workload for p in points} == {"lstm", "gru", "simple_rnn"}
    assert {p.dtype for p in points} == {"float32", "float64"}
    assert sorted({p.size.B for p in points}) == [1, 4, 8, 32, 64, 256]
    assert sorted({p.size.H for p in points}) == [32, 64, 128, 256, 512, 1024]
    assert all(p.size.D * 2 == p.size.H for p in points)
    # the order: workload, dtype, B, H
    assert [(p.size.B, p.size.H) for p in points[:7]] == [(1, 32), (1, 64), (1, 128), (1, 256),
                                                         (1, 512), (1, 1024), (4, 32)]


@pytest.mark.parametrize("workload, batch, units, expected", [
    ("lstm", 1, 32, 1000),       # 2e8 / (2*48*4*32) = 16276: clamped to the most
    ("lstm", 256, 1024, 20),     # 2e8 / (256*2*1536*4096) = 0.06: clamped to the least
    ("lstm", 8, 128, 127),       # 2e8 / (8*2*192*4*128) = 127.2
    ("gru", 8, 128, 170),        # 3 gates: 169.5 -> 170
    ("simple_rnn", 32, 256, 32),  # 1 gate: 2e8 / (32*2*384*256) = 31.8
])
def test_steps_follow_the_flop_rule(workload, batch, units, expected):
    assert grid.steps(workload, batch, units) == expected


def test_unclamped_points_reach_the_flop_target_and_clamped_ones_sit_at_a_bound():
    for point in grid.plan():
        flops = workloads.flops(point.workload, point.size)
        if grid.MIN_STEPS < point.size.T < grid.MAX_STEPS:
            step = flops / point.size.T
            assert abs(flops - grid.TARGET_FLOPS) <= step / 2 + 1
        elif point.size.T == grid.MIN_STEPS:
            assert flops >= grid.TARGET_FLOPS * 0.99
        else:
            assert point.size.T == grid.MAX_STEPS and flops <= grid.TARGET_FLOPS


def test_plan_rejects_odd_units_and_bad_batches():
    with pytest.raises(ValueError, match="units must be even"):
        grid.plan(units=(33,))
    with pytest.raises(ValueError, match="batches must be positive integers"):
        grid.plan(batches=(0,))


# --------------------------------------------------------------------------------------------
# Arguments: errors before anything runs
# --------------------------------------------------------------------------------------------

@pytest.fixture
def nothing_runs(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("benchmarking started despite an argument error")

    monkeypatch.setattr(runner, "run_isolated", refuse)
    monkeypatch.setattr(runner, "run_workers", refuse)
    monkeypatch.setattr(grid, "measure_gemm_peak", refuse)


@pytest.mark.parametrize("argv, message", [
    (["--batches", "1,2"], "--batches only applies with --grid"),
    (["--rounds", "2"], "--rounds only applies with --grid"),
    (["--grid", "--sizes", "1x2x3x4"], "--sizes does not apply with --grid"),
    (["--grid", "--units", "32,33"], "H must be even; got 33"),
    (["--grid", "--batches", "0,4"], "--batches: give comma-separated positive integers"),
    (["--grid", "--batches", "a"], "--batches: give comma-separated positive integers"),
    (["--grid", "--rounds", "0"], "--rounds must be at least 1"),
    (["--grid", "--dtypes", "float16"], "--dtypes: unknown 'float16'"),
    (["--grid", "--workloads", "none"], "--workloads: give at least one of"),
    (["--dtypes", "none"], "--dtypes: give at least one of float32, float64"),
    (["--grid", "--plot", "map.txt"], "must end in .png"),
    (["--model", "m.keras", "--grid"], "--grid does not apply with --model"),
    (["--model", "m.keras", "--dtypes", "float64"], "--dtypes does not apply with --model"),
])
def test_argument_errors(argv, message, capsys, nothing_runs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = bench(argv, capsys)
    assert code == 2, err
    assert message in err
    assert out == ""


# --------------------------------------------------------------------------------------------
# Rounds, JSON, Markdown and PNG on made-up results
# --------------------------------------------------------------------------------------------

def fake(key, kind, workload, dtype, batch, units, median_ms, status="ok", error=""):
    size = Size(batch, grid.steps(workload, batch, units), units // 2, units)
    return runner.Result(workload, size, key, key, kind, workloads.flops(workload, size), dtype,
                         status=status, error=error,
                         median_s=None if median_ms is None else median_ms / 1e3,
                         min_s=None if median_ms is None else median_ms / 1e3, repeats=3,
                         first_call_s=0.1, relative_error=1e-7)


def test_each_point_keeps_its_best_round_and_every_rounds_median():
    rounds = [[fake("torch", "peer", "lstm", "float32", 1, 32, 5.0),
               fake("gpukb[cpu]", "gpukb", "lstm", "float32", 1, 32, None, status="error",
                    error="boom")],
              [fake("torch", "peer", "lstm", "float32", 1, 32, 4.0),
               fake("gpukb[cpu]", "gpukb", "lstm", "float32", 1, 32, 3.0)],
              [fake("torch", "peer", "lstm", "float32", 1, 32, 6.0),
               fake("gpukb[cpu]", "gpukb", "lstm", "float32", 1, 32, 3.5)]]
    best = {r.key: r for r in grid.best_of_rounds(rounds)}
    assert best["torch"].median_s == pytest.approx(4e-3)
    assert best["torch"].round_medians_s == pytest.approx([5e-3, 4e-3, 6e-3])
    assert best["gpukb[cpu]"].status == "ok" and best["gpukb[cpu]"].median_s == pytest.approx(3e-3)
    assert best["gpukb[cpu]"].round_medians_s[0] is None


def test_a_worker_that_dies_on_a_point_is_followed_by_one_for_the_rest(monkeypatch):
    points = grid.plan(["gru"], ["float32"], [1, 2, 3], [4])
    calls = []

    def run_workers(keys, spec, *, per_key, from_wire, crashed, progress=None, python=None):
        sizes = [Size(**p["size"]) for p in spec["points"]]
        calls.append([s.B for s in sizes])
        if len(calls) == 1:  # the first worker finishes B=1, then dies on B=2
            started = {"workload": "gru", "dtype": "float32", "size": spec["points"][1]["size"],
                       "label": "x", "kind": "peer"}
            return ([fake("x", "peer", "gru", "float32", 1, 4, 1.0),
                     crashed("x", started, "worker process exited with code -11")], [], [])
        return [fake("x", "peer", "gru", "float32", s.B, 4, 1.0) for s in sizes], [], []

    monkeypatch.setattr(runner, "run_workers", run_workers)
    progress = runner.ProgressBar(3, enabled=False)
    results, _, skipped = grid.run_implementation("x", points, {}, progress=progress)
    assert calls == [[1, 2, 3], [3]]
    assert [(r.size.B, r.status) for r in results] == [(1, "ok"), (2, "error"), (3, "ok")]
    assert skipped == [] and progress.done == 3


MACHINE = {"cpu": "Test CPU", "cores": 2, "usable_cores": 2, "platform": "test",
           "versions": {"gpukb": "0.0", "python": "3", "numpy": "2", "numba": "0"},
           "gpukb_commit": None, "date": "2026-01-01T00:00:00+00:00"}


def fake_doc():
    """A 2 x 2 LSTM float32 grid and a float64 one where the only peer is n/a."""
    results = []
    times = {(1, 32): (1.0, 2.0, 4.0), (1, 64): (3.0, 2.0, 2.5),   # gpukb, onnxruntime, torch
             (8, 32): (2.0, 4.0, 1.0), (8, 64): (5.0, None, None)}
    for (batch, units), (mine, ort, torch) in times.items():
        results.append(fake("gpukb[cpu]", "gpukb", "lstm", "float32", batch, units, mine))
        for key, ms in (("onnxruntime", ort), ("torch", torch)):
            status = "ok" if ms is not None else "error"
            results.append(fake(key, "peer", "lstm", "float32", batch, units, ms, status=status))
        results.append(fake("gpukb[cpu]", "gpukb", "lstm", "float64", batch, units, 2 * mine))
        results.append(fake("onnxruntime", "peer", "lstm", "float64", batch, units, None,
                            status="n/a", error="float32 only: no double kernel"))
    runner.add_ratios(results)
    settings = {"workloads": ["lstm"], "dtypes": ["float32", "float64"], "batches": [1, 8],
                "units": [32, 64], "steps_rule": grid.STEPS_RULE, "repeats": 3, "budget_s": 0.3,
                "rounds": 1}
    gemm = {"n": 64, "seconds": 0.1, "threads": 2, "library": "NumPy matmul",
            "gflops": {"float32": 100.0, "float64": 50.0}}
    implementations = [runner_impl("gpukb[cpu]", "gpukb"), runner_impl("onnxruntime", "peer"),
                       runner_impl("torch", "peer")]
    return grid.document(results, machine=MACHINE, settings=settings, gemm=gemm,
                         implementations=implementations,
                         skipped=[("jax", "jax is not installed (pip install jax)")])


def runner_impl(key, kind):
    from gpukb.bench.implementations import Implementation

    return Implementation(key=key, kind=kind, threads="2", versions={key: "1.0"})


def test_the_json_document_holds_every_point_its_fraction_of_the_peak_and_the_maps():
    doc = json.loads(json.dumps(fake_doc()))  # JSON-clean
    assert doc["schema"] == grid.SCHEMA
    assert doc["gemm_peak"]["gflops"] == {"float32": 100.0, "float64": 50.0}
    assert len(doc["results"]) == 4 * 5
    for entry in doc["results"]:
        for key in ("workload", "dtype", "size", "key", "kind", "status", "median_ms", "gflops",
                    "ratio_to_fastest_peer", "relative_error", "round_medians_ms",
                    "fraction_of_gemm_peak"):
            assert key in entry
        if entry["status"] == "ok":
            peak = doc["gemm_peak"]["gflops"][entry["dtype"]]
            assert entry["fraction_of_gemm_peak"] == pytest.approx(entry["gflops"] / peak)
        else:
            assert entry["fraction_of_gemm_peak"] is None
    maps = {(m["workload"], m["dtype"]): m for m in doc["heatmaps"]}
    f32 = maps["lstm", "float32"]
    assert f32["batches"] == [1, 8] and f32["units"] == [32, 64]
    # gpukb / the fastest peer: (1, 32) 1/2, (1, 64) 3/2, (8, 32) 2/1, (8, 64) no peer
    assert f32["ratio"] == [[pytest.approx(0.5), pytest.approx(1.5)], [pytest.approx(2.0), None]]
    assert f32["fastest_peer"] == [["onnxruntime", "onnxruntime"], ["torch", None]]
    assert maps["lstm", "float64"]["ratio"] == [[None, None], [None, None]]
    assert maps["lstm", "float64"]["steps"][0][0] == grid.steps("lstm", 1, 32)


def test_markdown_bolds_the_cells_gpukb_wins_and_gives_the_fraction_of_the_peak():
    text = heatmap.markdown(fake_doc())
    assert "| B \\ H | 32 | 64 |" in text
    assert "| 1 | **0.50** | 1.50 |" in text          # bold: gpukb fastest
    assert "| 8 | 2.00 | – |" in text                 # no peer at (8, 64)
    assert "gpukb fastest in 1 of 3 cells" in text
    assert "fastest peer (cells): onnxruntime 2, torch 1" in text
    # (1, 32): gpukb 1 ms, the fastest peer 2 ms; the fraction is GFLOP/s / 100
    flops = workloads.flops("lstm", Size(1, grid.steps("lstm", 1, 32), 16, 32))
    mine, peer = flops / 1e-3 / 1e9 / 100, flops / 2e-3 / 1e9 / 100
    assert f"| 1 | {heatmap.percent(mine)} ({heatmap.percent(peer)}) |" in text
    assert "n/a: onnxruntime in float64: float32 only: no double kernel." in text
    assert "Skipped: jax: jax is not installed" in text
    assert "float32 100 GFLOP/s, float64 50 GFLOP/s" in text


def test_the_heatmap_command_redraws_a_saved_run(tmp_path, capsys):
    path = tmp_path / "grid.json"
    path.write_text(json.dumps(fake_doc()))
    assert heatmap.main([str(path)]) == 0
    assert capsys.readouterr().out.strip() == heatmap.markdown(fake_doc())
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"schema": report.SCHEMA}))
    with pytest.raises(SystemExit):
        heatmap.main([str(other)])
    assert "not a grid run" in capsys.readouterr().err


@pytest.mark.skipif(not has["matplotlib"], reason="needs matplotlib (gpukb[plot])")
def test_the_png_is_drawn(tmp_path):
    path = tmp_path / "grid.png"
    heatmap.plot(fake_doc(), path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_table_shows_na_rows_with_the_reason_and_a_dtype_column():
    rows = [fake("gpukb[cpu]", "gpukb", "simple_rnn", "float64", 1, 32, 1.0),
            fake("onnxruntime", "peer", "simple_rnn", "float64", 1, 32, None, status="n/a",
                 error="float32 only: no kernel"),
            fake("onnxruntime", "peer", "simple_rnn", "float64", 1, 64, None, status="n/a",
                 error="float32 only: no kernel")]
    text = report.format_table(rows)
    header = text.splitlines()[0].split()
    assert header[:3] == ["workload", "dtype", "size"]
    assert "n/a (float32 only)" in text
    assert text.count("n/a: onnxruntime, simple_rnn float64: float32 only: no kernel") == 1
    assert "SimpleRNN 1" in text
    assert "dtype" not in report.format_table(rows[:0])


# --------------------------------------------------------------------------------------------
# SimpleRNN and float64 in the peers
# --------------------------------------------------------------------------------------------

def problem_with_states(workload, dtype):
    problem = workloads.make_problem(workload, Size(3, 9, 4, 6), dtype=dtype)
    rng = np.random.default_rng(1)
    states = {name: rng.standard_normal(getattr(problem, name).shape).astype(dtype)
              for name in ("h0", "c0") if getattr(problem, name) is not None}
    return dataclasses.replace(problem, **states)


@needs_torch
@pytest.mark.parametrize("workload", workloads.WORKLOADS)
def test_torch_in_float64_matches_the_reference_to_float64_rounding(workload):
    peer = peers.TorchPeer()
    peer.prepare()
    assert peer.unsupported(workload, "float64") is None
    problem = problem_with_states(workload, np.float64)
    runnable = peer.build(problem)
    outputs = runnable.to_numpy(runnable.run())
    assert outputs.dtype == np.float64
    assert problem.relative_error(outputs) < 1e-13


@needs_onnxruntime
@pytest.mark.parametrize("workload", workloads.WORKLOADS)
def test_onnxruntime_float64_is_na_or_computed_in_float64(workload):
    """onnxruntime 1.32's CPU LSTM, GRU and RNN are float32 only: the probe says so; should a
    later version add float64, it must then be right to float64 rounding."""
    peer = peers.OnnxRuntimePeer()
    peer.prepare()
    assert peer.unsupported(workload, "float32") is None
    reason = peer.unsupported(workload, "float64")
    if reason is not None:
        assert reason.startswith("float32 only: onnxruntime ")
        assert peers.ONNX_OPERATORS[workload] in reason
        return
    problem = problem_with_states(workload, np.float64)
    runnable = peer.build(problem)
    assert problem.relative_error(runnable.to_numpy(runnable.run())) < 1e-13


@needs_onnxruntime
def test_onnxruntime_simple_rnn_matches_the_float64_reference():
    peer = peers.OnnxRuntimePeer()
    peer.prepare()
    problem = problem_with_states("simple_rnn", np.float32)
    runnable = peer.build(problem)
    assert problem.relative_error(runnable.to_numpy(runnable.run())) < 2e-6


@pytest.mark.parametrize("promoted", ["float32", "float64"])
def test_keras3_float64_is_na_where_keras_promotes_it_to_float32(promoted):
    """Keras 3.15 on the numpy, jax and torch backends: result_type('float64', 'float64') is
    float32 (measured: a float64 layer's outputs are 1e-7 off); on tensorflow it is float64."""
    peer = peers.Keras3Peer()
    peer.backend_name = "numpy"
    result_type = lambda a, b: promoted if a == "float64" else a  # noqa: E731
    peer.keras = types.SimpleNamespace(__version__="3.9",
                                       backend=types.SimpleNamespace(result_type=result_type))
    reason = peer.unsupported("lstm", "float64")
    if promoted == "float32":
        assert reason.startswith("float32 only: Keras 3.9 on the numpy backend computes float64 "
                                 "in float32")
    else:
        assert reason is None
    assert peer.unsupported("lstm", "float32") is None


def test_check_rows_checks_only_the_first_samples():
    problem = workloads.make_problem("gru", Size(5, 4, 3, 2), check_rows=2)
    assert problem.reference.shape == (2, 4, 2)
    full = workloads.reference("gru", problem.x, *problem.weights, *problem.states)
    outputs = full.copy()
    outputs[2:] += 1.0  # beyond the checked rows
    assert problem.relative_error(outputs) == 0.0
    outputs[1, 0, 0] += 1.0
    assert problem.relative_error(outputs) > 0.1


# --------------------------------------------------------------------------------------------
# A real run, restricted to a tiny grid
# --------------------------------------------------------------------------------------------

def test_a_tiny_grid_runs_each_implementation_once_and_writes_the_json(capsys, tmp_path,
                                                                        monkeypatch):
    monkeypatch.setattr(grid, "GEMM_N", 64)
    monkeypatch.setattr(grid, "GEMM_SECONDS", 0.01)
    peer = ["--peers", "onnxruntime"] if has["onnxruntime"] and has["onnx"] else ["--peers",
                                                                                  "none"]
    started = []
    popen = subprocess.Popen

    def counting(args, *rest, **kwargs):
        if "gpukb.bench.worker" in args:
            started.append(args)
        return popen(args, *rest, **kwargs)

    monkeypatch.setattr(subprocess, "Popen", counting)
    path = tmp_path / "grid.json"
    code, out, err = bench(["--grid", "--workloads", "simple_rnn", "--dtypes", "float32,float64",
                            "--batches", "1,2", "--units", "4", "--backends", "cpu", *peer,
                            "--repeats", "1", "--budget", "0.001", "--no-progress",
                            "--json", str(path)], capsys)
    assert code == 0, err
    doc = json.loads(path.read_text())
    assert doc["schema"] == grid.SCHEMA
    assert doc["settings"]["batches"] == [1, 2] and doc["settings"]["units"] == [4]
    assert doc["settings"]["steps_rule"] == grid.STEPS_RULE
    assert set(doc["gemm_peak"]["gflops"]) == {"float32", "float64"}
    assert all(g > 0 for g in doc["gemm_peak"]["gflops"].values())
    ours = [e for e in doc["results"] if e["key"] == "gpukb[cpu]"]
    assert [(e["dtype"], e["size"]["B"]) for e in ours] == [("float32", 1), ("float32", 2),
                                                            ("float64", 1), ("float64", 2)]
    for entry in ours:
        assert entry["status"] == "ok"
        assert entry["size"] == {"B": entry["size"]["B"], "T": 1000, "D": 2, "H": 4}
        assert entry["relative_error"] < (1e-6 if entry["dtype"] == "float32" else 1e-13)
    # one worker process per implementation, for all of its points
    assert len(started) == 1 + (peer[1] == "onnxruntime")
    assert "**SimpleRNN, float32**" in out and "| B \\ H | 4 |" in out
    if peer[1] == "onnxruntime":
        theirs = {e["dtype"]: e for e in doc["results"] if e["key"] == "onnxruntime"}
        assert theirs["float32"]["status"] == "ok"
        assert theirs["float32"]["relative_error"] < 1e-6
        if theirs["float64"]["status"] == "n/a":
            assert "float32 only" in theirs["float64"]["error"]
        ratios = [m["ratio"] for m in doc["heatmaps"] if m["dtype"] == "float32"][0]
        assert all(r is not None for row in ratios for r in row)


def test_workers_check_against_the_references_the_parent_computed(tmp_path, capsys):
    """The parent computes every point's float64 reference before any worker starts
    (runner.write_references); a worker loads it instead of running BLAS between timed calls. A
    wrong reference on disk shows in the worker's error, so the worker did use the file."""
    from gpukb.bench import worker

    size = Size(2, 3, 2, 4)
    point = {"workload": "simple_rnn", "dtype": "float32", "size": size.as_dict()}
    runner.write_references([point], str(tmp_path), 2)
    problem = workloads.make_problem("simple_rnn", size, check_rows=2)
    path = problem.reference_file(str(tmp_path))
    np.testing.assert_array_equal(np.load(path), problem.reference)
    np.save(path, problem.reference + 1.0)
    worker.run_workloads({"key": "gpukb[cpu]", "points": [point], "check_rows": 2,
                          "repeats": 1, "budget_s": 0.01, "references": str(tmp_path)})
    events = [json.loads(line[len(runner.WORKER_MARK):]) for line in capsys.readouterr().out
              .splitlines() if line.startswith(runner.WORKER_MARK)]
    result = next(e["result"] for e in events if e["event"] == "result")
    assert result["status"] == "ok" and result["relative_error"] > 0.1


def test_relative_error_is_the_frobenius_norms_ratio():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((3, 40, 5))
    out = ref + 1e-3 * rng.standard_normal(ref.shape)
    want = np.linalg.norm(out - ref) / np.linalg.norm(ref)
    assert workloads.relative_error(out, ref) == pytest.approx(want, rel=1e-12)
    assert workloads.relative_error(np.zeros(3), np.zeros(3)) == 0.0
