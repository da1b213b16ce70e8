"""The multi-block persistent kernel (grid sync between steps) under the simulator, with every block
running at once (``grid_sync.launch_cooperative``): the tilings that split the units of a sample
over several blocks, which Numba's own simulator cannot run, against the float64 reference.
"""

from __future__ import annotations

import contextlib

import numpy as np
from hypothesis import HealthCheck, assume, given, settings, strategies as st

from gpukb.backends import _cuda_cells as cells
from gpukb.kernels.cuda import _runtime, persistent

from grid_sync import launch_cooperative
from test_sim_kernels import cell_cases, check_against_reference, make_cell, prepared

GRID_EXAMPLES = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class CooperativeLauncher(_runtime.Launcher):
    """The simulator launcher, except that a grid-sync kernel runs with all its blocks at once."""

    launches = 0

    def launch(self, kernel, blocks, threads, *args, shared_bytes=0):
        type(self).launches += 1
        launch_cooperative(kernel, blocks, threads, *args, shared_bytes=shared_bytes)


@contextlib.contextmanager
def cooperative_launches():
    saved = _runtime.Launcher
    _runtime.Launcher = CooperativeLauncher
    try:
        yield
    finally:
        _runtime.Launcher = saved


def run_multi_block(cell, x, states, options, unit_tile, batch_tile, ksplit):
    plan_options = dict(unit_tile=unit_tile, batch_tile=batch_tile, ksplit=ksplit, coop=True,
                        max_blocks=64, threads=1024)
    with cooperative_launches():
        result = cells.run_cell(prepared(cell, x, states, options), cell, path="persistent",
                                plan_options=plan_options)
    return result, cells.last_path()


@GRID_EXAMPLES
@given(case=cell_cases(max_batch=3), unit_tile=st.integers(1, 3), batch_tile=st.integers(1, 3),
       ksplit=st.integers(1, 3))
def test_multi_block_persistent_kernel_matches_reference(case, unit_tile, batch_tile, ksplit):
    cell, x, states, options = case
    B, H = states[0].shape
    assume(unit_tile < H)  # several blocks share each sample's units: the grid sync matters
    result, plan = run_multi_block(cell, x, states, options, unit_tile, min(batch_tile, B), ksplit)
    assert isinstance(plan, persistent.Plan) and plan.coop
    assert plan.unit_blocks == -(-H // unit_tile) > 1 and plan.batch_blocks == -(-B // min(batch_tile, B))
    check_against_reference(cell, x, states, options, result)


def test_the_runner_is_what_makes_the_grid_sync_work():
    """Control: the same multi-block launch through the plain simulator (blocks one after another,
    grid sync = block barrier) does not give the reference's answer, so the test above can fail."""
    rng = np.random.default_rng(3)
    cell = make_cell("lstm", rng, 3, 6, np.float64, True, "tanh", "sigmoid")
    x = rng.standard_normal((2, 5, 3))
    states = [rng.standard_normal((2, 6)) for _ in range(2)]
    options = dict(go_backwards=False, time_major=False, zero_output_for_mask=False, return_all_outputs=True)
    CooperativeLauncher.launches = 0
    result, plan = run_multi_block(cell, x, states, options, unit_tile=2, batch_tile=2, ksplit=2)
    assert CooperativeLauncher.launches == 1 and plan.unit_blocks == 3
    check_against_reference(cell, x, states, options, result)
    sequential = cells.run_cell(prepared(cell, x, states, options), cell, path="persistent",
                                plan_options=dict(unit_tile=2, batch_tile=2, ksplit=2, coop=True,
                                                  max_blocks=64, threads=1024))
    assert not np.allclose(sequential[1], result[1])
