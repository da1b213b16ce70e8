"""``gpukb bench --masks`` (gpukb/bench/masks.py): the mask kinds, the float64 masked reference,
one group measured and checked (a wrong result is caught), the rounds, the argument errors and
a tiny end-to-end run. No timing assertions: speed claims come from the benchmark itself."""

import json
import re

import numpy as np
import pytest

import gpukb
from gpukb import cli
from gpukb.bench import masks, workloads
from gpukb.bench.masks import Row
from gpukb.bench.workloads import Size

from helpers import bench

TINY = Size(3, 8, 3, 4)


# --------------------------------------------------------------------------------------------
# Masks and the reference
# --------------------------------------------------------------------------------------------

def test_mask_kinds_share_lengths_and_have_their_shapes():
    B, T = 50, 9
    assert masks.make_mask("none", B, T) is None
    right, left = masks.make_mask("right", B, T), masks.make_mask("left", B, T)
    lengths = right.sum(axis=1)
    assert np.array_equal(lengths, left.sum(axis=1))  # the same lengths, padded on each side
    assert lengths.min() >= 5 and lengths.max() <= T and len(set(lengths)) > 1  # [T/2, T]
    for row, n in zip(right, lengths):
        assert row[:n].all() and not row[n:].any()
    for row, n in zip(left, lengths):
        assert row[T - n:].all() and not row[:T - n].any()
    random = masks.make_mask("random", 200, 50)
    assert 0.75 < random.mean() < 0.85
    assert not all(np.array_equal(r, np.sort(r)[::-1]) for r in random)  # not a padding
    assert np.array_equal(random, masks.make_mask("random", 200, 50))  # same seed, same mask
    with pytest.raises(ValueError, match="unknown mask kind 'middle'"):
        masks.make_mask("middle", B, T)


@pytest.mark.parametrize("workload", workloads.WORKLOADS)
def test_masked_reference_without_a_mask_is_the_bench_reference(workload):
    p = workloads.make_problem(workload, TINY)
    expected = workloads.reference(workload, p.x, *p.weights, *p.states)
    assert np.allclose(masks.masked_reference(workload, p.x, *p.weights, None), expected,
                       rtol=0, atol=1e-14)
    everything = np.ones((TINY.B, TINY.T), bool)
    assert np.allclose(masks.masked_reference(workload, p.x, *p.weights, everything), expected,
                       rtol=0, atol=1e-14)


@pytest.mark.parametrize("workload", workloads.WORKLOADS)
def test_masked_reference_holds_output_and_state_at_masked_steps(workload):
    p = workloads.make_problem(workload, TINY, dtype=np.float64)
    mask = masks.make_mask("random", TINY.B, TINY.T)
    mask[0, 0], mask[1, 3] = False, False
    out = masks.masked_reference(workload, p.x, *p.weights, mask)
    assert not out[0, 0].any()  # before the first valid step: zeros
    assert np.array_equal(out[1, 3], out[1, 2])
    # gpukb's float64 call agrees (its masking is tested against tf.keras elsewhere)
    found = gpukb.rnn(p.cell(), p.x, p.states, mask=mask, backend="cpu")[1]
    assert masks.relative_error(found, out) < 1e-12


# --------------------------------------------------------------------------------------------
# One group, measured and checked
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode, workload", [("forward", "gru"), ("forward+backward", "lstm")])
def test_a_group_times_every_kind_and_checks_it(mode, workload):
    rows = masks.measure_group(mode, workload, TINY, repeats=2, budget_s=0.01, check=True)
    kinds = masks.FORWARD_KINDS if mode == "forward" else masks.VJP_KINDS
    assert [r.mask for r in rows] == list(kinds)
    for r in rows:
        assert r.status == "ok", r.error
        assert (r.mode, r.workload, r.size) == (mode, workload, TINY)
        assert r.relative_error < 1e-5 and r.median_s > 0 and r.repeats == 2
        assert r.path == "fused_cell"
    assert rows[0].valid == 1.0 and all(r.valid < 1.0 for r in rows[1:])


def _drop_the_mask(function):
    def wrong(*args, mask=None, **kwargs):
        return function(*args, **kwargs)
    return wrong


@pytest.mark.parametrize("mode, name", [("forward", "rnn"), ("forward+backward", "rnn_vjp")])
def test_a_wrong_masked_result_is_caught_and_gets_no_ratio(mode, name, monkeypatch):
    """A fast path that ignored the mask would be faster; the check marks it wrong instead."""
    monkeypatch.setattr(gpukb, name, _drop_the_mask(getattr(gpukb, name)))
    rows = masks.measure_group(mode, "lstm", TINY, repeats=1, budget_s=0.01, check=True)
    masks.add_ratios(rows)
    statuses = {r.mask: r.status for r in rows}
    assert statuses.pop("none") == "ok"
    assert set(statuses.values()) == {"wrong"}
    for r in rows[1:]:
        assert r.relative_error > masks.TOLERANCE
        assert r.ratio_to_none is None and r.meets_goal is None
    table = masks.format_table(rows)
    assert "wrong: " in table and f"> {masks.TOLERANCE:g}" in table


def test_an_exception_makes_error_rows_for_the_group(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("kernel exploded")

    monkeypatch.setattr(gpukb, "rnn", broken)
    rows = masks.measure_group("forward", "gru", TINY, repeats=1, budget_s=0.01, check=True)
    assert [(r.status, r.error) for r in rows] == [("error", "RuntimeError: kernel exploded")] * 4


def test_kinds_are_timed_call_by_call_in_turn_within_the_budget():
    calls, now = [], [0.0]

    def clock():
        return now[0]

    def run(kind):
        def call():
            calls.append(kind)
            now[0] += 1.0
        return call

    times = masks.interleaved_times({k: run(k) for k in "abc"}, repeats=10, budget_s=2.0,
                                    clock=clock)
    assert calls == list("abcabc")  # 3 runs x 2 s of budget: two turns of 3 s
    assert times == {k: [1.0, 1.0] for k in "abc"}
    calls.clear()
    masks.interleaved_times({k: run(k) for k in "ab"}, repeats=1, budget_s=100.0, clock=clock)
    assert calls == ["a", "b"]


# --------------------------------------------------------------------------------------------
# Rounds and the table
# --------------------------------------------------------------------------------------------

def _row(mask, median_ms, status="ok", error=None):
    seconds = None if median_ms is None else median_ms / 1e3
    return Row("forward", "lstm", TINY, mask, 1.0, status=status, median_s=seconds,
               min_s=seconds, repeats=5, relative_error=error)


def test_rounds_keep_the_best_median_and_the_first_rounds_check():
    first = [_row("none", 10.0, error=1e-7), _row("right", 12.0, error=1e-7),
             _row("random", 9.0, status="wrong", error=0.3)]
    second = [_row("none", 8.0), _row("right", 11.0), _row("random", 7.0)]
    third = [_row("none", 9.0), _row("right", None, status="error"), _row("random", 7.0)]
    rows = {r.mask: r for r in masks.combine([first, second, third])}
    assert rows["none"].median_s == pytest.approx(8e-3)
    assert rows["right"].median_s == pytest.approx(11e-3)
    assert rows["right"].round_medians_s[:2] == pytest.approx([12e-3, 11e-3])
    assert rows["right"].round_medians_s[2] is None  # the round it failed in
    assert rows["right"].ratio_to_none == pytest.approx(11 / 8)
    assert rows["right"].meets_goal is False and rows["right"].relative_error == 1e-7
    assert rows["random"].status == "wrong" and rows["random"].ratio_to_none is None
    table = masks.format_table(list(rows.values()))
    lines = {line.split()[6]: line for line in table.splitlines() if line.startswith("forward")}
    assert "1.38x" in lines["right"] and " NO " in lines["right"]
    assert " wrong " in lines["random"] and not re.search(r"\d\.\d\dx", lines["random"])


def test_a_worker_that_dies_leaves_error_rows_with_its_stderr(tmp_path):
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\ncat > /dev/null\necho 'Fatal: double free' >&2\nexit 3\n")
    fake.chmod(0o755)
    spec = {"workloads": ["gru"], "sizes": [TINY.as_dict()], "repeats": 1, "budget_s": 0.01,
            "round": 0, "check": True}
    rows, ready = masks.run_round(spec, python=str(fake))
    assert ready == {}
    assert [(r.mode, r.mask) for r in rows] == (
        [("forward", k) for k in masks.FORWARD_KINDS]
        + [("forward+backward", k) for k in masks.VJP_KINDS])
    for r in rows:
        assert r.status == "error"
        assert "exited with code 3" in r.error and "double free" in r.error


# --------------------------------------------------------------------------------------------
# The command: argument errors before anything runs, and one tiny run
# --------------------------------------------------------------------------------------------

@pytest.fixture
def nothing_runs(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("benchmarking started despite an argument error")

    monkeypatch.setattr(masks, "run_round", refuse)


@pytest.mark.parametrize("argv, message", [
    (["--peers", "torch"], "--peers does not apply with --masks"),
    (["--backends", "cpu"], "--backends does not apply with --masks"),
    (["--dtypes", "float64"], "--dtypes does not apply with --masks"),
    (["--plot", "out.png"], "--plot does not apply with --masks"),
    (["--grid"], "--grid does not apply with --masks"),
    (["--backward"], "--backward does not apply with --masks"),
    (["--generic"], "--generic does not apply with --masks"),
    (["--model", "m.keras"], "--model does not apply with --masks"),
    (["--steps", "10"], "--steps only applies with --model"),
    (["--units", "64"], "--units only applies with --grid"),
    (["--rounds", "0"], "--rounds must be at least 1"),
    (["--repeats", "0"], "--repeats must be at least 1"),
    (["--budget", "0"], "--budget must be a positive number"),
    (["--workloads", "lstm,rnn"], "--workloads: unknown 'rnn'"),
    (["--workloads", "none"], "--workloads: give at least one of"),
    (["--sizes", "1x2x3"], "expected four positive integers"),
    (["--json", "/no/such/folder/out.json"], "the folder /no/such/folder does not exist"),
])
def test_argument_errors(argv, message, capsys, nothing_runs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = bench(["--masks", *argv], capsys)
    assert code == 2, err
    assert message in err
    assert out == ""


def test_rounds_without_a_mode_that_takes_them_is_refused(capsys, nothing_runs):
    code, _, err = bench(["--rounds", "2"], capsys)
    assert code == 2 and "--rounds only applies with --grid, --masks or --generic" in err


def test_quick_and_full_sizes():
    parser = cli.build_parser()
    full = masks.validate(parser.parse_args(["bench", "--masks"]), parser)
    quick = masks.validate(parser.parse_args(["bench", "--masks", "--quick"]), parser)
    assert full["sizes"] == list(workloads.FULL_SIZES) + [Size(8, 200, 32, 256)]
    assert quick["sizes"] == list(workloads.QUICK_SIZES)
    assert full["rounds"] == quick["rounds"] == masks.ROUNDS
    assert full["workloads"] == ["lstm", "gru", "simple_rnn"]


def test_a_tiny_run_prints_the_table_and_writes_json(capsys, tmp_path):
    path = tmp_path / "masks.json"
    code, out, err = bench(["--masks", "--sizes", "2x5x3x4", "--workloads", "simple_rnn",
                            "--rounds", "1", "--repeats", "1", "--budget", "0.01",
                            "--no-progress", "--json", str(path)], capsys)
    assert code == 0, out + err
    assert out.startswith("gpukb bench (masks): gpukb ")
    table = [line.split() for line in out.splitlines() if line.startswith("forward ")]
    assert [line[1] for line in table] == ["simple_rnn"] * 4  # no fused vjp rows asked for
    assert [line[6] for line in table] == list(masks.FORWARD_KINDS)
    doc = json.loads(path.read_text())
    assert doc["schema"] == masks.SCHEMA and doc["settings"]["rounds"] == 1
    assert doc["implementations"][0]["key"] == "gpukb[cpu]"
    results = doc["results"]
    assert [r["mask"] for r in results] == list(masks.FORWARD_KINDS)
    for r in results:
        assert r["status"] == "ok" and r["relative_error"] < 1e-5 and r["path"] == "fused_cell"
        assert r["ratio_to_none"] > 0 and len(r["round_medians_ms"]) == 1
    assert results[0]["ratio_to_none"] == 1.0 and results[0]["meets_goal"] is True


def test_a_wrong_row_makes_the_command_fail(capsys, monkeypatch):
    rows = [_row("none", 10.0, error=1e-7), _row("random", 5.0, status="wrong", error=0.3)]
    masks.add_ratios(rows)
    monkeypatch.setattr(masks, "run_masks", lambda *args, **kwargs: (rows, {}))
    code, out, err = bench(["--masks", "--sizes", "3x8x3x4", "--no-progress"], capsys)
    assert code == 1
    assert "wrong: forward lstm" in out and "1 row(s) wrong or failed" in err
