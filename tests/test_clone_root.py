"""From the root of a clone, ``python -c``/``python -m pytest`` import the clone's gpukb *and* its
kernels, whether gpukb is installed normally, in editable mode, or not at all."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not (REPO / "kernels" / "__init__.py").exists(),
                                reason="needs a checkout (kernels/ beside gpukb/)")


def _python(code, cwd):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GPUKB_", "PYTHON"))}
    env["GPUKB_HOME"] = str(cwd)
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def test_a_clone_root_imports_its_own_kernels(tmp_path):
    # A copy of the clone's two packages: whatever gpukb is installed (normally: its own
    # gpukb.kernels; editable: mapped to the original checkout), this folder's must be used.
    clone = tmp_path / "clone"
    for folder in ("gpukb", "kernels"):
        shutil.copytree(REPO / folder, clone / folder,
                        ignore=shutil.ignore_patterns("__pycache__", "*.nbi", "*.nbc"))
    code = ("import gpukb, gpukb.kernels.cpu, numpy as np\n"
            "cell = gpukb.cells.simple_rnn(np.eye(2), np.eye(2))\n"
            "last, _, _ = gpukb.rnn(cell, np.ones((1, 3, 2)), [np.zeros((1, 2))])\n"
            "print(gpukb.__file__); print(gpukb.kernels.__file__); print(gpukb.kernels.cpu.__file__)\n")
    result = _python(code, clone)
    assert result.returncode == 0, result.stderr
    files = [Path(line).resolve() for line in result.stdout.split()]
    assert files == [clone / "gpukb" / "__init__.py", clone / "kernels" / "__init__.py",
                     clone / "kernels" / "cpu" / "__init__.py"]


def test_python_m_pytest_runs_from_the_clone_root():
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_import.py"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
        env={k: v for k, v in os.environ.items() if not k.startswith("PYTHON")})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
