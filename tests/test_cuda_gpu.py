"""The cuda backend on a real GPU (marker ``gpu``): skipped, with the reason, where none is usable.

Importing CuPy is not enough (it imports without a GPU): a test runs only when the backend reports
itself available (driver, device, CuPy, numba-cuda) and a CuPy kernel actually runs.
"""

from __future__ import annotations

import time

import numpy as np
import optree
import pytest

import gpukb
from gpukb.testing.reference import rnn_reference
from gpukb.testing.test_conformance import (  # noqa: F401  (pytest collects the imported tests)
    test_errors_come_before_any_step,
    test_generic_step_matches_reference,
    test_keras_cells_match_reference,
    test_returns_the_backends_array_type,
)

pytestmark = pytest.mark.gpu


def _usable_gpu_backend():
    record = {r.name: r for r in gpukb._dispatch.backend_records()}.get("cuda")
    if record is None:
        pytest.skip("the cuda backend is not installed")
    if not record.availability:
        pytest.skip(f"no usable GPU: {record.availability.reason}")
    if record.backend.simulated:
        pytest.skip("running under the CUDA simulator, not a GPU")
    try:
        import cupy

        float(cupy.arange(3).sum())
    except Exception as error:  # noqa: BLE001 - any CUDA failure means "no usable GPU"
        pytest.skip(f"no usable GPU for CuPy: {error}")
    return record.backend


@pytest.fixture(scope="module")
def backend():
    return _usable_gpu_backend()


@pytest.fixture(scope="module")
def cupy(backend):
    import cupy

    return cupy


def make_cell(kind, rng, D, H, dtype):
    gates = {"lstm": 4, "gru": 3, "gru_before": 3, "simple_rnn": 1}[kind]
    kernel = (0.5 * rng.standard_normal((D, gates * H)) / np.sqrt(D)).astype(dtype)
    recurrent = (0.5 * rng.standard_normal((H, gates * H)) / np.sqrt(H)).astype(dtype)
    bias = (0.1 * rng.standard_normal((2, 3 * H) if kind == "gru" else (gates * H,))).astype(dtype)
    if kind == "lstm":
        return gpukb.cells.lstm(kernel, recurrent, bias)
    if kind in ("gru", "gru_before"):
        return gpukb.cells.gru(kernel, recurrent, bias, reset_after=kind == "gru")
    return gpukb.cells.simple_rnn(kernel, recurrent, bias)


def problem(kind, dtype, B, T, D, H, mask_kind, seed=0, time_major=False):
    rng = np.random.default_rng(seed)
    cell = make_cell(kind, rng, D, H, dtype)
    x = rng.standard_normal((T, B, D) if time_major else (B, T, D)).astype(dtype)
    states = [rng.standard_normal((B, H)).astype(dtype) for _ in cell.state_size]
    options = dict(time_major=time_major)
    if mask_kind == "random":
        valid = rng.random((B, T)) < 0.6
        options["mask"] = valid.T if time_major else valid
    elif mask_kind == "lengths":
        options["input_length"] = rng.integers(0, T + 1, size=B)
    return cell, x, states, options


def run_and_check(backend, cupy, cell, x, states, options, rtol=None, atol=None, **extra):
    opts = dict(options, **extra)
    expected = rnn_reference(cell.converted(lambda w: np.asarray(w, np.float64)), x.astype(np.float64),
                             [s.astype(np.float64) for s in states], **opts)
    device_opts = {k: (cupy.asarray(v) if isinstance(v, np.ndarray) else v) for k, v in opts.items()}
    last, outputs, new_states = gpukb.rnn(cell, cupy.asarray(x), [cupy.asarray(s) for s in states],
                                          backend="cuda", **device_opts)
    assert isinstance(outputs, cupy.ndarray) and isinstance(new_states[0], cupy.ndarray)
    f32 = x.dtype == np.float32
    tol = dict(rtol=rtol or (2e-4 if f32 else 1e-10), atol=atol or (2e-5 if f32 else 1e-12))
    np.testing.assert_allclose(cupy.asnumpy(outputs), expected[1], **tol)
    np.testing.assert_allclose(cupy.asnumpy(last), expected[0], **tol)
    for got, want in zip(new_states, expected[2]):
        np.testing.assert_allclose(cupy.asnumpy(got), want, **tol)


@pytest.mark.parametrize("kind", ["lstm", "gru", "gru_before", "simple_rnn"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("path", ["step", "persistent", "auto"])
@pytest.mark.parametrize("mask_kind", ["none", "random", "lengths"])
def test_fused_cells_match_reference(backend, cupy, kind, dtype, path, mask_kind):
    from gpukb.backends import _cuda_cells as cells

    cell, x, states, options = problem(kind, dtype, B=5, T=9, D=7, H=40, mask_kind=mask_kind)
    saved = backend.cell_path
    backend.cell_path = path
    try:
        for flags in (dict(), dict(go_backwards=True, zero_output_for_mask=True),
                      dict(return_all_outputs=False)):
            run_and_check(backend, cupy, cell, x, states, options, **flags)
    finally:
        backend.cell_path = saved
    assert (cells.last_path() == "step") == (path == "step")


@pytest.mark.parametrize("kind", ["lstm", "gru", "gru_before", "simple_rnn"])
@pytest.mark.parametrize("B, H", [(1, 256), (8, 256), (3, 72)])
def test_persistent_kernel_with_a_grid_sync_over_many_blocks(backend, cupy, kind, B, H):
    """The cooperative multi-block variant: the simulator cannot run it, so it is tested here."""
    from gpukb.backends import _cuda_cells as cells
    from gpukb.kernels.cuda import persistent

    cell, x, states, options = problem(kind, np.float32, B=B, T=12, D=16, H=H, mask_kind="random")
    prepared = gpukb._rnn.prepare(cell.converted(cupy.asarray), cupy.asarray(x),
                                  [cupy.asarray(s) for s in states], mask=cupy.asarray(options["mask"]),
                                  xp=cupy)
    result = cells.run_cell(prepared, prepared.step_function, path="persistent",
                            plan_options=dict(unit_tile=8))
    plan = cells.last_path()
    assert isinstance(plan, persistent.Plan) and plan.coop and plan.unit_blocks > 1
    expected = rnn_reference(cell.converted(lambda w: np.asarray(w, np.float64)), x.astype(np.float64),
                             [s.astype(np.float64) for s in states], **options)
    np.testing.assert_allclose(cupy.asnumpy(result[1]), expected[1], rtol=2e-4, atol=2e-5)


def test_default_size_rule_at_the_benchmark_shapes(backend):
    from gpukb.kernels.cuda import persistent

    assert persistent.plan(1, 256, persistent.LSTM, 4) is not None
    assert persistent.plan(64, 1024, persistent.LSTM, 4) is None


def test_runs_on_the_current_stream_and_never_waits_for_the_gpu(backend, cupy):
    """A busy kernel queued first keeps the stream occupied; gpukb.rnn must return well before it
    finishes (no host sync in the time loop), and its results must still be right afterwards."""
    spin = cupy.RawKernel(r'''
    extern "C" __global__ void spin(long long cycles) {
        long long start = clock64();
        while (clock64() - start < cycles) { }
    }''', "spin")
    for path, mask_kind in (("step", "random"), ("persistent", "random"), ("step", "lengths")):
        cell, x, states, options = problem("lstm", np.float32, B=4, T=50, D=16, H=32, mask_kind=mask_kind)
        saved = backend.cell_path
        backend.cell_path = path
        try:
            stream = cupy.cuda.Stream(non_blocking=True)
            with stream:
                xs, ss = cupy.asarray(x), [cupy.asarray(s) for s in states]
                # Lengths as a Python list: checked on the host (a CuPy array would be read back).
                extra = ({"mask": cupy.asarray(options["mask"])} if "mask" in options
                         else {"input_length": [int(n) for n in options["input_length"]]})
                gpukb.rnn(cell, xs, ss, backend="cuda", **extra)  # compile and warm up
                stream.synchronize()
                spin((1,), (1,), (np.int64(3_000_000_000),))  # ~1.5 s of GPU time
                start = time.perf_counter()
                last, outputs, new_states = gpukb.rnn(cell, xs, ss, backend="cuda", **extra)
                elapsed = time.perf_counter() - start
                assert not stream.done
                stream.synchronize()
        finally:
            backend.cell_path = saved
        assert elapsed < 0.5, f"{path}, {mask_kind}: gpukb.rnn waited for the GPU ({elapsed:.2f} s)"
        expected = rnn_reference(cell.converted(lambda w: np.asarray(w, np.float64)), x.astype(np.float64),
                                 [s.astype(np.float64) for s in states], **options)
        np.testing.assert_allclose(cupy.asnumpy(outputs), expected[1], rtol=2e-4, atol=2e-5)


def test_generic_path_masks_with_one_kernel_per_step_and_equals_the_generic_loop(backend, cupy):
    from gpukb import _rnn
    from gpukb.backends import _cuda_generic as generic
    from gpukb.kernels.cuda import _runtime

    rng = np.random.default_rng(0)
    x = cupy.asarray(rng.standard_normal((3, 6, 2)))
    states = [cupy.asarray(rng.standard_normal((3, 4))), cupy.asarray(rng.integers(0, 9, (3, 2, 2)))]
    mask = cupy.asarray(rng.random((3, 6)) < 0.5)

    def step(xt, s):
        h, k = s[0], s[1]
        return {"o": cupy.tanh(h[:, :2] + xt)}, [cupy.tanh(h + xt.sum(1, keepdims=True)), k + 1]

    for zero_out in (False, True):
        kwargs = dict(mask=mask, zero_output_for_mask=zero_out, go_backwards=True, xp=cupy)
        expected = _rnn.run_generic(_rnn.prepare(step, x, states, **kwargs))
        result = generic.run_masked(_rnn.prepare(step, x, states, **kwargs), _runtime.Launcher(cupy))
        for a, e in zip(optree.tree_leaves(result), optree.tree_leaves(expected)):
            assert a.dtype == e.dtype and bool((a == e).all())


def test_numba_device_arrays_are_viewed_without_a_copy(backend, cupy):
    from numba import cuda

    cell, x, states, options = problem("gru", np.float32, B=2, T=4, D=3, H=5, mask_kind="none")
    d_x = cuda.to_device(x)
    d_states = [cuda.to_device(s) for s in states]
    last, outputs, new_states = gpukb.rnn(cell, d_x, d_states)  # chosen by type: numba device arrays
    assert isinstance(outputs, cupy.ndarray)
    expected = rnn_reference(cell.converted(lambda w: np.asarray(w, np.float64)), x.astype(np.float64),
                             [s.astype(np.float64) for s in states])
    np.testing.assert_allclose(cupy.asnumpy(outputs), expected[1], rtol=2e-4, atol=2e-5)


def test_clear_session_frees_the_memory_pool(backend, cupy):
    cell, x, states, options = problem("lstm", np.float32, B=8, T=20, D=32, H=64, mask_kind="none")
    gpukb.rnn(cell, cupy.asarray(x), [cupy.asarray(s) for s in states], backend="cuda")
    cupy.cuda.get_current_stream().synchronize()
    gpukb.clear_session()
    assert cupy.get_default_memory_pool().free_bytes() == 0
    from gpukb.kernels.cuda import _runtime

    assert not _runtime._CACHE


def test_tf32_only_on_opt_in(backend, cupy):
    from cupy._core import _routines_linalg as linalg

    before = linalg.get_compute_type(np.float32)
    cell, x, states, options = problem("lstm", np.float32, B=64, T=10, D=512, H=512, mask_kind="none")
    saved = backend.cell_path, backend.allow_tf32
    backend.cell_path = "step"
    try:
        backend.allow_tf32 = False
        run_and_check(backend, cupy, cell, x, states, options, rtol=1e-4, atol=1e-5)
        backend.allow_tf32 = True
        run_and_check(backend, cupy, cell, x, states, options, rtol=5e-2, atol=5e-3)
    finally:
        backend.cell_path, backend.allow_tf32 = saved
    assert linalg.get_compute_type(np.float32) == before


@pytest.mark.parametrize("kind", ["lstm", "gru_before"])
def test_per_step_launches_skip_numba_dispatch_and_equal_it_bit_for_bit(backend, cupy, kind, monkeypatch):
    """The per-step loop converts its kernel arguments once (RepeatedLaunch) instead of through
    numba-cuda's dispatcher at every step: it must actually do so on this numba-cuda (not fall
    back), and give exactly what the dispatcher's launches give."""
    from gpukb.kernels.cuda import _runtime

    made = []
    original = _runtime.RepeatedLaunch.__init__

    def record(self, *args, **kwargs):
        original(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(_runtime.RepeatedLaunch, "__init__", record)
    monkeypatch.setattr(backend, "cell_path", "step")
    cell, x, states, options = problem(kind, np.float32, B=6, T=11, D=5, H=24, mask_kind="random")
    device = dict(mask=cupy.asarray(options["mask"]))
    for flags in (dict(), dict(go_backwards=True, return_all_outputs=False)):
        results = []
        for fast in (True, False):
            monkeypatch.setattr(_runtime, "FAST_LAUNCH", fast)
            made.clear()
            result = gpukb.rnn(cell, cupy.asarray(x), [cupy.asarray(s) for s in states],
                               backend="cuda", **device, **flags)
            assert made and all(launch.fast == fast for launch in made)
            results.append([cupy.asnumpy(a) for a in optree.tree_leaves(result)])
        for got, want in zip(*results):
            np.testing.assert_array_equal(got, want)
