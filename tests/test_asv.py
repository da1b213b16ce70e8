"""The asv suite (asv_bench/) imports, checks and runs, so that the benchmarks cannot rot.

Runs asv on a temporary copy of the configuration (same benchmarks, results/HTML/machine file in a
temporary folder, HOME pointed there) with the existing environment (``--python=same``: the gpukb
installed in this interpreter). ``asv check`` sees the real parameters; the quick run shrinks the
sizes with GPUKB_ASV_SIZES so that every benchmark (each parameter combination once, set-up and
compilation included) finishes in seconds. asv comes with the test extra; without it these tests
are skipped.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("asv", reason="asv is not installed (pip install 'gpukb[bench]')")
from asv import util as asv_util  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SUITE = ROOT / "asv_bench"


def load_conf():
    return asv_util.load_json(str(SUITE / "asv.conf.json"), js_comments=True)


@pytest.fixture(scope="module")
def asv_copy(tmp_path_factory):
    """(config path, environment) for running asv on a throw-away copy of the suite."""
    work = tmp_path_factory.mktemp("asv")
    shutil.copytree(SUITE / "benchmarks", work / "benchmarks",
                    ignore=shutil.ignore_patterns("__pycache__"))
    # The existing environment never reads the repository for `check` and `run --dry-run`, so an
    # empty folder stands in for it (CI checkouts may be shallow or have no "main" branch).
    (work / "repo").mkdir()
    conf = load_conf()
    conf.update(repo=str(work / "repo"), benchmark_dir="benchmarks", env_dir="env",
                results_dir="results", html_dir="html")
    path = work / "asv.conf.json"
    path.write_text(json.dumps(conf, indent=2))
    env = dict(os.environ, HOME=str(work / "home"), PYTHONDONTWRITEBYTECODE="1")
    (work / "home").mkdir()
    env.pop("GPUKB_ASV_SIZES", None)
    machine = asv(path, env, "machine", "--yes", "--machine", "ci")
    assert machine.returncode == 0, machine.stdout + machine.stderr
    return path, env


def asv(conf, env, *args, timeout=120):
    return subprocess.run([sys.executable, "-m", "asv", *args, "--config", str(conf)],
                          capture_output=True, text=True, env=env, cwd=conf.parent,
                          timeout=timeout)


def test_configuration_uses_the_existing_environment():
    conf = load_conf()
    assert conf["environment_type"] == "existing"
    assert conf["repo"] == ".."
    assert not conf.get("matrix")
    assert (SUITE / conf["benchmark_dir"]).is_dir()
    ignored = (ROOT / ".gitignore").read_text().split()
    for key in ("env_dir", "results_dir", "html_dir"):
        assert f"asv_bench/{conf[key]}/" in ignored


def test_asv_check(asv_copy):
    conf, env = asv_copy
    result = asv(conf, env, "check", "--python=same")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "No problems found" in output


def test_asv_quick_run_of_every_benchmark(asv_copy):
    conf, env = asv_copy
    env = dict(env, GPUKB_ASV_SIZES="3x4x2x5")
    result = asv(conf, env, "run", "--python=same", "--quick", "--dry-run", "--show-stderr",
                 "--machine", "ci", timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "failed" not in output, output
    for name in ("rnn.TimeRnn.time_rnn", "rnn.PeakmemRnnCPU.peakmem_rnn",
                 "imports.timeraw_import_gpukb", "imports.timeraw_first_lstm_call",
                 "training.TimeRnnVjp.time_rnn_vjp", "training.TimeTorchDropin.time_dropin_step",
                 "training.TimeShortCall.time_short_call"):
        assert name in output, output
    import gpukb

    try:
        gpukb.get_backend("cuda")
    except (RuntimeError, ValueError):
        # asv's skip: setup raised NotImplementedError, the rows read n/a
        assert "NotImplementedError" in output and "n/a" in output
