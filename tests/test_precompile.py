"""``gpukb precompile``: after it, a new process's fused calls of that cell and dtype, of any size
and with any flags, compile nothing (checked with Numba's own counters in fresh processes)."""

import json
import re

import pytest

from gpukb import cli

from helpers import run_python
from test_numba_cache import no_cache_anywhere

PRECOMPILE = "import sys; from gpukb.cli import main; sys.exit(main(sys.argv[1:]))"

# simple_rnn in float64: the cheapest kernels to compile; every size and flag the kernels tell
# apart (one thread's loop, the batch split over the threads (B = 64: its backward sums the
# weight gradients by another kernel), masks, both directions, time-major, the last output only,
# recompute, a frozen cell, d_last_output).
VARIED_CALLS = """
import json, numpy as np, gpukb
from gpukb.kernels.cpu import _numba_cache
rng = np.random.default_rng(1)
for B, T, D, H in ((1, 7, 3, 5), (5, 20, 16, 32), (100, 12, 20, 24), (3, 300, 16, 32),
                   (64, 50, 32, 64)):
    cell = gpukb.cells.simple_rnn(*(0.2 * rng.standard_normal(s) for s in ((D, H), (H, H), (H,))))
    x, h0 = rng.standard_normal((B, T, D)), [rng.standard_normal((B, H))]
    mask = rng.random((B, T)) < 0.7
    for flags in ({}, {"mask": mask}, {"go_backwards": True, "mask": mask},
                  {"return_all_outputs": False}, {"zero_output_for_mask": True, "mask": mask}):
        gpukb.rnn(cell, x, h0, **flags)
        for recompute in (False, True):
            (last, outputs, _), pullback = gpukb.rnn_vjp(cell, x, h0, recompute=recompute, **flags)
            pullback(np.ones_like(outputs), d_last_output=np.ones_like(last))
    xt = np.ascontiguousarray(x.transpose(1, 0, 2))
    (_, outputs, _), pullback = gpukb.rnn_vjp(cell, xt, h0, time_major=True)
    pullback(np.ones_like(outputs))
    cell.freeze()
    gpukb.rnn(cell, x, h0)
loaded, compiled = _numba_cache.cache_counts()
print(json.dumps(dict(loaded=loaded, compiled=compiled)))
"""

LINE = re.compile(r"^simple_rnn\s+float64\s+(\d+) compiled,\s+(\d+) loaded from the cache",
                  re.MULTILINE)


def test_after_precompile_no_call_compiles(tmp_path):
    env = {"NUMBA_CACHE_DIR": str(tmp_path / "numba-cache")}
    args = ["precompile", "--cells", "simple_rnn", "--dtypes", "float64"]
    first = run_python(PRECOMPILE, home=tmp_path, env=env, argv=args)
    assert first.returncode == 0, first.stderr
    compiled, loaded = map(int, LINE.search(first.stdout).groups())
    assert compiled > 0 and loaded == 0, first.stdout
    assert f"Numba's cache: {tmp_path / 'numba-cache'}" in first.stdout, first.stdout

    calls = run_python(VARIED_CALLS, home=tmp_path, env=env)
    assert calls.returncode == 0, calls.stderr
    counts = json.loads(calls.stdout.strip().splitlines()[-1])
    assert counts["compiled"] == 0 and counts["loaded"] > 0, counts

    again = run_python(PRECOMPILE, home=tmp_path, env=env, argv=args)
    assert again.returncode == 0, again.stderr
    compiled, loaded = map(int, LINE.search(again.stdout).groups())
    assert compiled == 0 and loaded > 0, again.stdout


def test_without_a_usable_cache_it_fails_and_says_why(tmp_path):
    _, env = no_cache_anywhere(tmp_path)
    res = run_python(PRECOMPILE, home=tmp_path, env=env,
                     argv=["precompile", "--cells", "simple_rnn", "--dtypes", "float64",
                           "--no-gradients"])
    assert res.returncode == 1, (res.stdout, res.stderr)
    assert "gpukb precompile: Numba has no disk cache" in res.stderr, res.stderr
    assert "NUMBA_CACHE_DIR" in res.stderr, res.stderr


@pytest.mark.parametrize("argv,message", [
    (["--cells", "lstm,foo"],
     "cells must be one or more of lstm, gru, simple_rnn ('foo' is not one)"),
    (["--dtypes", "float16"],
     "dtypes must be one or more of float32, float64 ('float16' is not one)"),
    (["--cells", ","], "cells must be one or more of lstm, gru, simple_rnn (none given)"),
])
def test_bad_arguments_are_refused_before_any_work(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["precompile", *argv])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
