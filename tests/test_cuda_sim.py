"""Every CUDA kernel, and the whole conformance suite on the cuda backend, under Numba's CUDA simulator.

The simulator must be switched on before Numba is first imported, so the tests in
``tests/cuda_sim`` run in a fresh interpreter with ``NUMBA_ENABLE_CUDASIM=1``; this process (and so
the rest of the suite) never sees the simulator. Needs ``numba-cuda`` (the ``test`` extra), no GPU.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("numba_cuda") is None,
                       reason="numba-cuda is not installed (the test extra installs it)"),
]


def run_simulated(*args, env=None, timeout=600):
    child_env = {k: v for k, v in os.environ.items() if not k.startswith(("GPUKB_", "NUMBA_"))}
    child_env.update({"NUMBA_ENABLE_CUDASIM": "1", "GPUKB_TEST_EXAMPLES": "40",
                      "HYPOTHESIS_PROFILE": "ci"})
    child_env.update(env or {})
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args]
    # Not cwd=REPO: "python -m" puts the working folder first on sys.path, and the source
    # tree's gpukb/ (no kernels/ inside) would shadow an installed gpukb.
    return subprocess.run(command, cwd=tempfile.gettempdir(), env=child_env, capture_output=True,
                          text=True, timeout=timeout)


def assert_passed(result):
    tail = (result.stdout + result.stderr)[-6000:]
    assert result.returncode == 0, tail
    assert " passed" in result.stdout and " failed" not in result.stdout, tail


def test_kernels_and_conformance_suite_under_the_simulator():
    assert_passed(run_simulated(str(TESTS / "cuda_sim")))


def test_conformance_of_the_per_step_kernels_under_the_simulator():
    """The default size rule sends the suite's small batches to the persistent kernel; run the
    Keras-cell conformance test once more with the per-step kernels forced."""
    assert_passed(run_simulated(
        str(TESTS / "cuda_sim" / "test_sim_conformance.py") + "::test_keras_cells_match_reference",
        env={"GPUKB_CUDA_CELL_PATH": "step"}))


def test_the_simulator_folder_is_skipped_without_the_simulator():
    """Run here without NUMBA_ENABLE_CUDASIM, tests/cuda_sim collects nothing (never a wrong pass)."""
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             str(TESTS / "cuda_sim")], cwd=tempfile.gettempdir(), env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 5, result.stdout + result.stderr  # 5: no tests collected
