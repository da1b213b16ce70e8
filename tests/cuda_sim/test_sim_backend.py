"""The cuda backend as users see it, under the CUDA simulator (NumPy arrays, same kernels)."""

from __future__ import annotations

import numpy as np
import pytest

import gpukb
from gpukb import _rnn
from gpukb.backends import _cuda_cells as cells
from gpukb.kernels.cuda import _runtime


def lstm_problem(B=2, T=3, D=2, H=3, dtype=np.float32):
    rng = np.random.default_rng(1)
    cell = gpukb.cells.lstm(rng.standard_normal((D, 4 * H)).astype(dtype),
                            rng.standard_normal((H, 4 * H)).astype(dtype),
                            rng.standard_normal(4 * H).astype(dtype))
    x = rng.standard_normal((B, T, D)).astype(dtype)
    states = [np.zeros((B, H), dtype), np.zeros((B, H), dtype)]
    return cell, x, states


def test_numpy_arrays_still_go_to_cpu_automatically():
    cell, x, states = lstm_problem()
    backend = gpukb.get_backend("cuda")
    assert "numpy:ndarray" in backend.array_types and backend.is_available()
    from gpukb import _dispatch

    assert _dispatch.select_backend([x]).name == "cpu"
    assert _dispatch.select_backend([x], "cuda").name == "cuda"


def test_explicit_selection_runs_the_fused_kernels_and_returns_numpy():
    cell, x, states = lstm_problem()
    last, outputs, new_states = gpukb.rnn(cell, x, states, backend="cuda")
    assert cells.last_path() is not None
    assert type(outputs) is np.ndarray and type(last) is np.ndarray
    assert isinstance(new_states, list) and len(new_states) == 2
    expected = _rnn.run_generic(_rnn.prepare(cell, x, states, xp=np))
    np.testing.assert_allclose(outputs, expected[1], rtol=1e-5, atol=1e-6)
    # The caller's initial states are never written to.
    assert not states[0].any() and not states[1].any()


@pytest.mark.parametrize("path", ["step", "persistent"])
def test_cell_path_option(path):
    cell, x, states = lstm_problem()
    backend = gpukb.get_backend("cuda")
    saved = backend.cell_path
    backend.cell_path = path
    try:
        gpukb.rnn(cell, x, states, backend="cuda")
    finally:
        backend.cell_path = saved
    chosen = cells.last_path()
    assert chosen == "step" if path == "step" else chosen != "step"


def test_generic_cell_path_runs_the_cell_in_python_with_the_masking_kernel():
    cell, x, states = lstm_problem()
    mask = np.array([[1, 0, 1], [0, 0, 1]], bool)
    backend = gpukb.get_backend("cuda")
    saved = backend.cell_path
    backend.cell_path = "generic"
    try:
        result = gpukb.rnn(cell, x, states, mask=mask, backend="cuda")
    finally:
        backend.cell_path = saved
    expected = _rnn.run_generic(_rnn.prepare(cell, x, states, mask=mask, xp=np))
    for got, want in zip([result[0], result[1], *result[2]], [expected[0], expected[1], *expected[2]]):
        assert np.array_equal(got, want)


def test_unknown_cell_path_is_a_value_error():
    backend = gpukb.get_backend("cuda")
    saved = backend.cell_path
    with pytest.raises(ValueError, match="cell_path.*'auto', 'step', 'persistent', 'generic'.*'fastest'"):
        backend.cell_path = "fastest"  # refused when set, before any call
    assert backend.cell_path == saved


def test_cells_the_kernels_do_not_take_fall_back_to_the_generic_loop():
    cell, x, states = lstm_problem()
    # Integer inputs: the cell itself raises its error, as on cpu (floating ones are cast).
    with pytest.raises(ValueError, match="dtype int64, expected float32"):
        gpukb.rnn(cell, x.astype(np.int64), states, backend="cuda")
    # A float16 cell runs (generic loop), like on the cpu backend.
    cell16 = cell.converted(lambda w: np.asarray(w, np.float16))
    out16 = gpukb.rnn(cell16, x.astype(np.float16), [s.astype(np.float16) for s in states], backend="cuda")
    assert out16[1].dtype == np.float16


def test_clear_session_drops_the_compiled_kernels():
    cell, x, states = lstm_problem()
    gpukb.rnn(cell, x, states, backend="cuda")
    assert _runtime._CACHE
    gpukb.clear_session()
    assert not _runtime._CACHE
    gpukb.rnn(cell, x, states, backend="cuda")  # rebuilt on demand
    assert _runtime._CACHE


def test_tf32_option_is_off_by_default_and_harmless_in_the_simulator(monkeypatch):
    backend = gpukb.get_backend("cuda")
    assert backend.allow_tf32 is False
    cell, x, states = lstm_problem()
    backend.allow_tf32 = True
    try:
        gpukb.rnn(cell, x, states, backend="cuda")
    finally:
        backend.allow_tf32 = False


def test_benchmark_script_smoke():
    """The GPU benchmark (python -m gpukb.bench.cuda) runs end to end, tiny, simulated."""
    from gpukb.bench import cuda as benchmark

    result = benchmark.run(cells=("lstm",), shapes=[(2, 3)], steps=2, repeat=1, warmup=0,
                           masks=("none", "random"))
    assert result["info"]["simulator"] is True
    assert [row["mask"] for row in result["rows"]] == ["none", "random"]
    assert all(row["step_ms"] > 0 and row["auto_ms"] > 0 and row["auto_tf32_ms"] > 0 for row in result["rows"])
