"""Numba's disk cache for the CPU kernels: fused calls work without a writable cache location,
and unreadable cache files are recompiled (both checked in fresh child processes)."""

import json
import os
import shutil
import sys

import numpy as np

import gpukb
import gpukb.kernels
from gpukb.kernels.cpu import _numba_cache

from helpers import run_python

NO_CACHE_CHILD = """
import json, numpy as np, gpukb
from gpukb.testing.reference import rnn_reference
rng = np.random.default_rng(0)
W, U = rng.standard_normal((3, 5)) * 0.5, rng.standard_normal((5, 5)) * 0.5
cell = gpukb.cells.simple_rnn(W, U, np.full(5, 0.1))
x, h0 = rng.standard_normal((4, 6, 3)), np.zeros((4, 5))
got = [gpukb.rnn(cell, x, [h0])[1] for _ in range(2)]   # the second call must work too
want = rnn_reference(cell, x, [h0])[1]
print(json.dumps(dict(kernels=gpukb.kernels.cpu.__file__,
                      err=max(float(np.max(np.abs(g - want))) for g in got))))
"""


def _install_read_only_copy(root):
    """gpukb copied as an installation whose folders cannot be written: its kernels' __pycache__
    is a regular file, so no cache folder can be made there."""
    site = root / "site"
    skip = shutil.ignore_patterns("__pycache__")
    shutil.copytree(os.path.dirname(gpukb.__file__), site / "gpukb", ignore=skip)
    if not (site / "gpukb" / "kernels").exists():  # an editable install maps kernels/ there
        shutil.copytree(os.path.dirname(gpukb.kernels.__file__), site / "gpukb" / "kernels",
                        ignore=skip)
    (site / "gpukb" / "kernels" / "cpu" / "__pycache__").write_text("")
    return site


def no_cache_anywhere(root):
    """(site, env): a read-only copy of gpukb under ``root`` and a child environment that runs
    it with no usable Numba cache location anywhere (the installation, the home folder,
    NUMBA_CACHE_DIR: each lies under a regular file)."""
    site = _install_read_only_copy(root)
    blocked = root / "a-file"
    blocked.write_text("")
    env = {"PYTHONPATH": str(site), "PYTHONDONTWRITEBYTECODE": "1",
           "NUMBA_CACHE_DIR": str(blocked / "numba"), "HOME": str(blocked / "home"),
           "XDG_CACHE_HOME": str(blocked / "cache")}
    return site, env


def test_fused_cells_run_without_a_writable_cache_location(tmp_path):
    """No usable Numba cache anywhere (the installation, the home folder, NUMBA_CACHE_DIR):
    fused calls compile in memory, with one warning that says to set NUMBA_CACHE_DIR."""
    site, env = no_cache_anywhere(tmp_path)
    res = run_python(NO_CACHE_CHILD, home=tmp_path, env=env)
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got["kernels"].startswith(str(site)), got   # the copy ran, not the checkout
    assert got["err"] < 1e-12, got
    warnings = [line for line in res.stderr.splitlines() if "gpukb CPU kernels" in line]
    assert len(warnings) == 1, res.stderr      # one, for all kernels and both calls
    assert "RuntimeWarning" in warnings[0] and "NUMBA_CACHE_DIR" in warnings[0], res.stderr


MODULE = """
from gpukb.kernels.cpu._numba_cache import cached_njit


@cached_njit()
def twice(x):
    return 2 * x


@cached_njit(error_model="numpy")
def plus_one(x):
    return x + 1
"""

CORRUPT_CHILD = """
import importlib.util, json, sys
sys.path.insert(0, {folder!r})
import tinykernels as k
out = dict(values=[k.twice(3), k.plus_one(2.5)],
           misses=[sum(f.stats.cache_misses.values()) for f in (k.twice, k.plus_one)])
# a fresh dispatcher for the same source, as the next process would have: reads the files back
spec = importlib.util.spec_from_file_location("tinykernels_again", {path!r})
again = importlib.util.module_from_spec(spec)
spec.loader.exec_module(again)
out["again"] = [again.twice(3), again.plus_one(2.5)]
out["hits"] = [sum(f.stats.cache_hits.values()) for f in (again.twice, again.plus_one)]
print(json.dumps(out))
"""


def test_unreadable_cache_files_are_recompiled(tmp_path):
    """Truncated index and data files (a crashed writer): the next process drops them with one
    warning, compiles, and writes files that read back."""
    folder = tmp_path / "src"
    folder.mkdir()
    path = folder / "tinykernels.py"
    path.write_text(MODULE)
    child = CORRUPT_CHILD.format(folder=str(folder), path=str(path))
    env = {"NUMBA_CACHE_DIR": str(tmp_path / "numba-cache")}
    first = run_python(child, home=tmp_path, env=env)
    assert first.returncode == 0, first.stderr
    assert "gpukb CPU kernels" not in first.stderr, first.stderr
    files = sorted(p for p in (tmp_path / "numba-cache").rglob("tinykernels.*") if p.is_file())
    index = [p for p in files if p.name.startswith("tinykernels.twice") and p.suffix == ".nbi"]
    data = [p for p in files if p.name.startswith("tinykernels.plus_one") and p.suffix == ".nbc"]
    assert len(index) == 1 and len(data) == 1, files
    index[0].write_bytes(b"")                                    # EOFError
    data[0].write_bytes(data[0].read_bytes()[:100])              # UnpicklingError

    second = run_python(child, home=tmp_path, env=env)
    assert second.returncode == 0, second.stderr
    got = json.loads(second.stdout.strip().splitlines()[-1])
    assert got["values"] == [6, 3.5] and got["again"] == [6, 3.5], got
    assert got["misses"] == [1, 1], got        # both compiled again
    assert got["hits"] == [1, 1], got          # and written back readable
    warnings = [line for line in second.stderr.splitlines() if "gpukb CPU kernels" in line]
    assert len(warnings) == 1 and "RuntimeWarning" in warnings[0], second.stderr
    assert "unreadable Numba cache file" in warnings[0], second.stderr


def test_every_kernel_uses_the_self_healing_cache():
    """Each jitted function of the CPU kernels caches through cached_njit, none through a plain
    ``cache=True`` (which fails without a cache location)."""
    from numba.core.caching import FunctionCache
    from numba.core.registry import CPUDispatcher

    import gpukb.kernels.cpu.jit_loop  # noqa: F401  (the jit_step loop's helpers)

    found = [(m, k, v) for m in ("activations", "_gemm", "lstm", "gru", "simple_rnn", "jit_loop")
             for k, v in vars(sys.modules["gpukb.kernels.cpu." + m]).items()
             if isinstance(v, CPUDispatcher) and v.__module__ == "gpukb.kernels.cpu." + m]
    healing = [k for _, k, v in found if isinstance(v._cache, _numba_cache._SelfHealingCache)]
    plain = [k for _, k, v in found if type(v._cache) is FunctionCache]
    assert plain == [] and len(healing) >= 10, (plain, healing)
