"""The CUDA kernels compiled for a real GPU (sm_90), without a GPU, and the persistent kernel's size
rule checked against what a launch allows.

The simulator runs kernels as Python; only Numba's CUDA compiler sees typing and lowering errors,
double-precision arithmetic leaking into float32 kernels, and register counts. The compile check
needs the ``ptx-check`` extra (NVIDIA's NVVM, NVRTC and nvJitLink wheels); it skips, with the
reason, where they are missing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

ptx_check = pytest.importorskip("gpukb.tools.ptx_check", reason="numba-cuda is not installed")

KERNELS = {"lstm_step", "gru_step", "gru_gates", "gru_before_step", "simple_rnn_step", "persistent",
           "masked_step"}
# The backward kernels of rnn_vjp (gpukb.kernels.cuda.backward).
KERNELS |= {f"{kind}_backward_{part}" for kind in ("lstm", "gru", "gru_before", "simple_rnn")
            for part in ("step", "gates")}
KERNELS |= {"states_before", "lstm_cell_states", "gru_before_candidate", "gru_before_reset",
            "persistent_backward"}
PERSISTENT_KERNELS = {"persistent", "persistent_backward"}


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    report = tmp_path_factory.mktemp("ptx") / "kernels.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUMBA_")}  # never the simulator
    done = subprocess.run([sys.executable, "-m", "gpukb.tools.ptx_check", "--json", str(report)], cwd=tempfile.gettempdir(), env=env,
                          capture_output=True, text=True, timeout=600)
    if done.returncode == ptx_check.NO_COMPILER:
        pytest.skip(done.stdout.strip())
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-6000:]
    return json.loads(report.read_text()), done.stdout


@pytest.mark.slow
def test_every_kernel_compiles_for_sm90_without_problems(compiled):
    records, _ = compiled
    assert {r["kernel"] for r in records} == KERNELS
    for dtype in ("float32", "float64"):
        for name in PERSISTENT_KERNELS:
            persistent = [r for r in records if r["kernel"] == name and r["dtype"] == dtype]
            assert len(persistent) == 8, name  # 4 cell kinds x (syncthreads, grid sync)
        for name in KERNELS - PERSISTENT_KERNELS - {"masked_step"}:
            assert sum(r["kernel"] == name and r["dtype"] == dtype for r in records) == 1, (name, dtype)
    assert all(not r["problems"] for r in records)
    assert all(r["double_instructions"] == 0 for r in records if r["dtype"] == "float32")
    # The float64 kernels really are float64 (the check above is not vacuous).
    assert all(r["double_instructions"] > 0 for r in records if r["dtype"] == "float64")


@pytest.mark.slow
def test_registers_allow_every_recorded_launch(compiled):
    records, stdout = compiled
    if "not linked" in stdout:
        pytest.skip(stdout.split("not linked", 1)[1].splitlines()[0])
    for r in records:
        assert r["registers"] is not None and r["spill_stores"] == 0, r
        limit = ptx_check.Compiled("k", "", "", registers=r["registers"]).max_threads()
        assert all(threads <= limit for _, threads, _ in r["launches"]), r
    # The widest launches recorded come from the size rule at B=8 (see ptx_check._planner_cases).
    widest = max(threads for r in records if r["kernel"] == "persistent" for _, threads, _ in r["launches"])
    assert widest >= 128


def test_problems_are_reported():
    wide = ptx_check.Compiled("persistent", "sig", "float32", launches={(1, 800, 1024)}, registers=116)
    assert wide.max_threads() == 544  # 116 registers -> 3840 per warp -> 17 warps
    assert any("800 threads" in p for p in wide.problems())
    doubles = ptx_check.Compiled("lstm_step", "sig", "float32", launches={(4, 128, 0)}, double_instructions=3)
    assert any("double-precision" in p for p in doubles.problems())
    assert ptx_check.Compiled("lstm_step", "sig", "float64", launches={(4, 128, 0)},
                              double_instructions=3, registers=40).problems() == []
    shared = ptx_check.Compiled("persistent", "sig", "float32", launches={(1, 256, 64 * 1024)})
    assert any("shared memory" in p for p in shared.problems())
    assert ptx_check._DOUBLE_OP.findall("\tfma.rn.f64 \t%fd1, %fd2;\n\tadd.f32 %f1;\n") == ["\tfma.rn.f64"]


@settings(max_examples=300, deadline=None)
@given(batch=st.integers(1, 8), units=st.integers(1, 4096), kind=st.integers(0, 3),
       itemsize=st.sampled_from([4, 8]), sms=st.sampled_from([1, 16, 132]))
def test_size_rule_only_picks_launchable_tilings(batch, units, kind, itemsize, sms):
    """Whatever (B, H) it is given, a tiling the size rule picks covers the problem and can launch:
    at most PERSISTENT_THREADS threads (launchable at any register count), the shared-memory
    budget, and (grid sync) no more blocks than can be co-resident."""
    from gpukb.kernels.cuda import persistent

    plan = persistent.plan(batch, units, kind, itemsize, max_blocks=sms)
    if plan is None:
        return
    assert 1 <= plan.threads <= persistent.PERSISTENT_THREADS <= 256
    assert persistent.shared_bytes(plan, units, kind, itemsize) <= persistent.PERSISTENT_SHARED_BYTES
    assert plan.unit_tile * plan.unit_blocks >= units and plan.batch_tile * plan.batch_blocks >= batch
    assert plan.coop == (plan.unit_blocks > 1)
    if plan.coop:
        assert plan.blocks <= sms * persistent.PERSISTENT_BLOCKS_PER_SM


def test_the_numba_cuda_calls_the_gpu_launcher_makes_exist():
    """The GPU-only half of ``_runtime.Launcher`` cannot run here; at least the numba-cuda API it
    calls must be there (``sync=False`` is what keeps a launch from waiting on the stream)."""
    import inspect

    from numba import cuda

    assert "sync" in inspect.signature(cuda.as_cuda_array).parameters
    assert list(inspect.signature(cuda.external_stream).parameters) == ["ptr"]
    assert callable(cuda.legacy_default_stream) and callable(cuda.get_current_device)
    assert callable(cuda.cg.this_grid)
