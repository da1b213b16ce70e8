"""The fused CPU backward's reused work arrays (gpukb.kernels.cpu._scratch): a buffer is handed
out again only when nothing references it, so results never change; what the pool keeps is
bounded, settable and let go by clear_session."""

import sys
import threading
import warnings

import numpy as np
import pytest

import gpukb
from gpukb.backends import cpu as cpu_backend
from gpukb.kernels.cpu import _scratch

from test_rnn_vjp_threads import _gradients, _problem

BIG = (300, 1000)   # 1.2 MB of float32: pooled (MIN_BYTES is 1 MiB)


@pytest.fixture(autouse=True)
def fresh_pool():
    _scratch.clear()
    saved = _scratch.limit()
    yield
    _scratch.set_limit(saved)
    _scratch.clear()


def test_the_refcount_of_a_free_buffer_is_what_the_pool_expects_on_this_python():
    """_FREE_REFCOUNT is measured at import by the same function that checks the buffers; one
    view more must always count one more."""
    probe = {0: np.empty(8, np.uint8)}
    assert _scratch._references(probe, 0) == _scratch._FREE_REFCOUNT
    view = probe[0][2:]
    assert _scratch._references(probe, 0) == _scratch._FREE_REFCOUNT + 1
    del view
    a = _scratch.empty(BIG, np.float32)
    address = a.ctypes.data
    del a
    b = _scratch.empty(BIG, np.float32)
    assert b.ctypes.data == address and _scratch.held_bytes() == b.nbytes


def test_a_buffer_is_never_handed_out_while_any_view_of_it_lives():
    a = _scratch.empty(BIG, np.float32)
    a[:] = 1.0
    view = a[::3, 5:]           # only a view left
    del a
    b = _scratch.empty(BIG, np.float32)
    b[:] = 2.0
    assert np.all(view == 1.0)
    as_bytes = memoryview(b)    # a buffer-protocol consumer keeps it too
    del b
    c = _scratch.empty(BIG, np.float32)
    c[:] = 3.0
    assert np.all(np.asarray(as_bytes) == 2.0) and np.all(view == 1.0)
    assert _scratch.held_bytes() == 3 * c.nbytes


def test_sizes_dtypes_and_shapes():
    a = _scratch.empty(BIG, np.float32)
    address = a.ctypes.data
    del a
    b = _scratch.empty((600, 500), np.float32)    # same bytes, other shape: reused
    assert b.ctypes.data == address and b.shape == (600, 500) and b.flags.c_contiguous
    del b
    c = _scratch.empty((150, 1000), np.float64)   # same bytes, other dtype
    assert c.ctypes.data == address and c.dtype == np.float64
    small = _scratch.empty((10, 10), np.float32)  # under MIN_BYTES: plain np.empty
    assert small.base is None and _scratch.held_bytes() == c.nbytes


def test_the_limit_bounds_what_is_kept_and_lets_free_buffers_go_oldest_first():
    size = np.zeros(BIG, np.float32).nbytes
    _scratch.set_limit(size * 5 // 2)
    a, b = _scratch.empty(BIG, np.float32), _scratch.empty(BIG, np.float32)
    c = _scratch.empty(BIG, np.float32)           # over the limit, none free: not pooled
    assert c.base is None and _scratch.held_bytes() == 2 * size
    del a
    d = _scratch.empty((1500, 250), np.float32)   # another size: the free one goes to make room
    assert d.base is not None and _scratch.held_bytes() == size + d.nbytes
    _scratch.set_limit(0)                         # d and b in use: kept until free
    e = _scratch.empty(BIG, np.float32)
    assert e.base is None and _scratch.held_bytes() == size + d.nbytes
    del b, d
    _scratch.set_limit(0)
    assert _scratch.held_bytes() == 0


def _vjp_case(seed):
    return _problem("lstm", True, 32, 40, 24, 128, np.float32, seed=seed)


def test_repeated_pullbacks_reuse_their_work_arrays_and_give_the_same_bits():
    cell, x, states, mask, d_out, d_states = _vjp_case(0)
    runs = []
    for _ in range(4):
        _, pullback = gpukb.rnn_vjp(cell, x, states, mask=mask)
        runs.append(_gradients(pullback, d_out, d_states))
        del pullback
        if len(runs) == 2:
            held = _scratch.held_bytes()
    assert held > 0 and _scratch.held_bytes() == held   # nothing new after the second call
    for grads in runs[1:]:
        for got, want in zip(grads, runs[0]):
            np.testing.assert_array_equal(got, want)


def test_a_pullback_whose_sums_ran_on_a_worker_thread_frees_its_arrays(monkeypatch):
    """A small batch's reverse loop runs on the calling thread and the weight sums on a worker
    (backward._BlockSums): once the call returns, the worker must not keep the task, whose
    closure holds the call's work arrays (it did until its next task)."""
    from gpukb.kernels.cpu import _common

    monkeypatch.setattr(_common, "max_threads", lambda: 2)
    monkeypatch.setattr(_common, "_MIN_FLOPS_TO_SPLIT", 0.0)
    cell, x, states, mask, d_out, d_states = _problem("lstm", True, 4, 300, 24, 128, np.float32)
    for call in range(3):
        _, pullback = gpukb.rnn_vjp(cell, x, states, mask=mask)
        _gradients(pullback, d_out, d_states)
        del pullback
        if call == 0:
            held = _scratch.held_bytes()
    assert held > 0 and _scratch.held_bytes() == held   # the first call's buffers came back


def test_a_live_pullback_keeps_its_arrays_while_other_calls_run():
    cell, x, states, mask, d_out, d_states = _vjp_case(0)
    _, first = gpukb.rnn_vjp(cell, x, states, mask=mask)
    _, _, residuals = gpukb.rnn_vjp(cell, x, states, mask=mask, return_residuals=True)
    copies = [np.array(r, copy=True) for r in residuals]
    assert any(r.base is not None for r in residuals)   # the kept buffers came from the pool
    for seed in (1, 2, 3):   # other data through the pool in between
        other = _vjp_case(seed)
        _, pullback = gpukb.rnn_vjp(other[0], other[1], other[2], mask=other[3])
        _gradients(pullback, other[4], other[5])
    for kept, copy in zip(residuals, copies):
        np.testing.assert_array_equal(kept, copy)
    _scratch.set_limit(0)
    _, fresh = gpukb.rnn_vjp(cell, x, states, mask=mask)
    for got, want in zip(_gradients(first, d_out, d_states), _gradients(fresh, d_out, d_states)):
        np.testing.assert_array_equal(got, want)


def test_concurrent_pullbacks_from_threads_give_their_own_results():
    cases = [_vjp_case(seed) for seed in range(4)]
    expected = []
    for cell, x, states, mask, d_out, d_states in cases:
        _, pullback = gpukb.rnn_vjp(cell, x, states, mask=mask)
        expected.append(_gradients(pullback, d_out, d_states))
    got = [None] * len(cases)

    def work(i):
        cell, x, states, mask, d_out, d_states = cases[i]
        for _ in range(3):
            _, pullback = gpukb.rnn_vjp(cell, x, states, mask=mask)
            got[i] = _gradients(pullback, d_out, d_states)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(cases))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for g, e in zip(got, expected):
        for a, b in zip(g, e):
            np.testing.assert_array_equal(a, b)


def test_the_backend_option_sets_the_limit_and_checks_its_value(monkeypatch):
    backend = gpukb.get_backend("cpu")
    saved = backend.scratch_bytes
    try:
        backend.scratch_bytes = 0
        assert _scratch.limit() == 0
        cell, x, states, mask, d_out, d_states = _vjp_case(0)
        _, pullback = gpukb.rnn_vjp(cell, x, states, mask=mask)
        _gradients(pullback, d_out, d_states)
        assert _scratch.held_bytes() == 0
        backend.scratch_bytes = 64 << 20
        assert _scratch.limit() == 64 << 20
        with pytest.raises(TypeError, match="scratch_bytes must be an int"):
            backend.scratch_bytes = 1.5
        with pytest.raises(TypeError, match="scratch_bytes must be an int"):
            backend.scratch_bytes = True
        with pytest.raises(ValueError, match="scratch_bytes must be 0 or more, got -1"):
            backend.scratch_bytes = -1
        assert backend.scratch_bytes == 64 << 20
    finally:
        backend.scratch_bytes = saved
    monkeypatch.setenv("GPUKB_CPU_SCRATCH_MB", "12")
    assert cpu_backend._scratch_from_environment() == 12 << 20
    monkeypatch.setenv("GPUKB_CPU_SCRATCH_MB", "lots")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert cpu_backend._scratch_from_environment() == cpu_backend.DEFAULT_SCRATCH_BYTES
    assert any("GPUKB_CPU_SCRATCH_MB ignored" in str(w.message) for w in caught)
    assert cpu_backend.DEFAULT_SCRATCH_BYTES == _scratch.DEFAULT_LIMIT_BYTES


def test_clear_session_lets_the_kept_buffers_go():
    cell, x, states, mask, d_out, d_states = _vjp_case(0)
    _, pullback = gpukb.rnn_vjp(cell, x, states, mask=mask)
    _gradients(pullback, d_out, d_states)
    del pullback
    assert _scratch.held_bytes() > 0
    assert gpukb.get_backend("cpu").on_clear_session() is True
    assert _scratch.held_bytes() == 0
    assert gpukb.get_backend("cpu").on_clear_session() is False


def test_importing_gpukb_does_not_import_the_kernels_for_the_option():
    import subprocess

    code = ("import sys, gpukb; gpukb.get_backend('cpu').scratch_bytes = 1 << 20; "
            "print('numba' in sys.modules, 'gpukb.kernels.cpu._scratch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
