"""Small batches on several threads: the CPU kernels split the units of every step
(gpukb.kernels.cpu._common.unit_chunks), the threads meet once per step (_sync.meet). The
results must be bit for bit those of one thread, whatever the cell, flags, mask and dtype."""

import threading
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
import pytest

from gpukb.kernels.cells import GRU, GRU_BEFORE, LSTM, SIMPLE_RNN
from gpukb.kernels.cpu import _common, _sync, run_cell
from gpukb.kernels.cpu._sync import meet, new_sync
from gpukb.kernels.options import LoopOptions

GATES = {LSTM: 4, GRU: 3, GRU_BEFORE: 3, SIMPLE_RNN: 1}


def _problem(kind, B, T, D, H, dtype, seed=0):
    rng = np.random.default_rng(seed)
    G = GATES[kind]
    x = rng.standard_normal((B, T, D)).astype(dtype)
    W = (rng.standard_normal((D, G * H)) * 0.3).astype(dtype)
    U = (rng.standard_normal((H, G * H)) / np.sqrt(H)).astype(dtype)
    b = rng.standard_normal((2, G * H) if kind == GRU else (G * H,)).astype(dtype)
    states = [rng.standard_normal((B, H)).astype(dtype) for _ in range(2 if kind == LSTM else 1)]
    mask = rng.random((T, B)) < 0.7
    mask[:2, 0] = False   # a sample whose first steps are masked
    return x, W, U, b, states, mask


def _run(problem, options, activations, split, monkeypatch, small_rows=False):
    """run_cell on 2 threads with the unit split forced on or off, and the small-batch row split
    (small_batch_rows) on or off; returns (results, chunks)."""
    kind, (x, W, U, b, states, mask) = problem
    chunks = []
    original = _common.run_chunks

    def spy(fn, args, parts, *rest):
        chunks.append(list(parts))
        return original(fn, args, parts, *rest)

    with monkeypatch.context() as m:
        m.setattr(_common, "max_threads", lambda: 2)
        m.setattr(_common, "_MIN_SMALL_ROWS", 4 if small_rows else 0)
        m.setattr(_common, "_MIN_STEP_FLOPS_TO_SPLIT_UNITS", 0.0 if split else float("inf"))
        m.setattr(_common, "_MIN_SECONDS_TO_SPLIT_UNITS", 0.0)
        m.setattr(_common, "_SPLIT_WEIGHTS_PAST_L1", 0.0)   # SimpleRNN's U: 64 KiB at H = 128
        m.setattr(_common, "run_chunks", spy)
        last, out, new_states = run_cell(kind, x, W, U, b, states, mask, options, *activations)
    return [last, out, *new_states], chunks[0]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind", [LSTM, GRU, SIMPLE_RNN])
def test_unit_split_gives_the_one_thread_bits(kind, dtype, monkeypatch):
    H = 128   # two threads of 64 units: whole panels, the widest (float32, one row) included
    cases = [  # batch, options, activations
        (1, LoopOptions(), ("tanh", "sigmoid")),
        (5, LoopOptions(go_backwards=True, zero_output_for_mask=True), ("relu", "hard_sigmoid")),
        (3, LoopOptions(return_all_outputs=False, time_major=True), ("linear", "hard_sigmoid_keras3")),
        (8, LoopOptions(zero_output_for_mask=False), ("tanh", "sigmoid")),
    ]
    for B, options, activations in cases:
        problem = (kind, _problem(kind, B, 13, 5, H, dtype, seed=B))
        if options.time_major:
            x = problem[1][0]
            problem = (kind, (np.ascontiguousarray(x.transpose(1, 0, 2)), *problem[1][1:]))
        one, one_chunks = _run(problem, options, activations, False, monkeypatch)
        split, split_chunks = _run(problem, options, activations, True, monkeypatch)
        assert one_chunks == [(0, B, 0, H)]
        assert len(split_chunks) == 2 and all(c[:2] == (0, B) for c in split_chunks)
        for a, b in zip(one, split):
            np.testing.assert_array_equal(a, b)


def test_gru_with_reset_after_false_never_splits_units(monkeypatch):
    problem = (GRU_BEFORE, _problem(GRU_BEFORE, 4, 6, 3, 64, np.float32))
    _, chunks = _run(problem, LoopOptions(), ("tanh", "sigmoid"), True, monkeypatch)
    assert chunks == [(0, 4, 0, 64)]


def test_unit_chunks_cost_rule(monkeypatch):
    monkeypatch.setattr(_common, "max_threads", lambda: 2)
    monkeypatch.setattr(_common, "L1_BYTES", 48 << 10)
    monkeypatch.setattr(_common, "L2_BYTES", 2 << 20)
    u = (1 << 20) + 4   # a recurrent kernel just past half of L2
    big = 10 * _common._MIN_STEP_FLOPS_TO_SPLIT_UNITS
    least = _common._MIN_STEP_FLOPS_TO_SPLIT_UNITS
    # a kernel of at least _SPLIT_WEIGHTS_PAST_L1 times L1 is split, whatever L2
    past_l1 = int(_common._SPLIT_WEIGHTS_PAST_L1 * (48 << 10))
    assert _common.unit_chunks(8, 256, least, 16, past_l1 - 4) is None
    assert _common.unit_chunks(8, 256, least, 16, past_l1) == [(0, 128), (128, 256)]
    assert _common.unit_chunks(8, 256, least, 16, u) == [(0, 128), (128, 256)]
    assert _common.unit_chunks(8, 256, big, 16, 0) is None          # all work, no bytes to share
    assert _common.unit_chunks(8, 256, big, 16, u) == [(0, 128), (128, 256)]
    assert _common.unit_chunks(8, 256, big, 64, u) == [(0, 128), (128, 256)]
    # a batch that the row split takes, too little work per step, units off the panels
    assert _common.unit_chunks(16, 256, big, 16, u) is None
    assert _common.unit_chunks(8, 256, least / 2, 16, u) is None
    assert _common.unit_chunks(8, 200, big, 16, u) is None
    assert _common.unit_chunks(8, 16, big, 16, u) is None          # one panel: nothing to share
    assert _common.unit_chunks(8, 256, big, 16, u, threads=1) is None
    # more threads than two: shares of whole panels, as even as they can be
    assert _common.unit_chunks(2, 64, big, 16, u, threads=3) == [(0, 16), (16, 32), (32, 64)]
    # ... but no more threads than the kernel has shares of L1's size (48 KiB here)
    assert len(_common.unit_chunks(1, 256, big, 16, 8 << 20, threads=8)) == 8
    assert len(_common.unit_chunks(1, 256, big, 16, 3 * (48 << 10), threads=8)) == 3
    assert len(_common.unit_chunks(1, 256, big, 16, past_l1, threads=8)) == 2


def test_unit_chunks_split_only_calls_long_enough_to_pay_for_the_other_threads(monkeypatch):
    """With ``steps``: one thread's estimated time for the call (per step the slower of the flops
    and streaming the recurrent kernel, from L2 or from beyond) must reach
    _MIN_SECONDS_TO_SPLIT_UNITS."""
    monkeypatch.setattr(_common, "max_threads", lambda: 2)
    monkeypatch.setattr(_common, "L2_BYTES", 2 << 20)
    c = _common
    least = c._MIN_STEP_FLOPS_TO_SPLIT_UNITS
    halves = [(0, 128), (128, 256)]
    for flops, weights, bandwidth in [
            (least, 1 << 20, c._L2_BYTES_PER_SECOND),          # streaming from L2 decides
            (least, 8 << 20, c._FAR_BYTES_PER_SECOND),         # ... from beyond L2
            (1e3 * least, 1 << 20, None)]:                     # the flops decide
        per_step = flops / c._SPLIT_FLOPS_PER_SECOND if bandwidth is None else weights / bandwidth
        assert per_step >= max(flops / c._SPLIT_FLOPS_PER_SECOND, weights / c._L2_BYTES_PER_SECOND)
        enough = int(np.ceil(c._MIN_SECONDS_TO_SPLIT_UNITS / per_step))
        assert c.unit_chunks(1, 256, flops, 16, weights, steps=enough) == halves
        assert c.unit_chunks(1, 256, flops, 16, weights, steps=enough - 1) is None
        assert c.unit_chunks(1, 256, flops, 16, weights) == halves   # no steps: no such rule
    # LSTM, float32, H = 256, B = 1, T = 20 (one thread: 0.8-0.9 ms here) is not split, T = 254 is
    step, u = 2 * 4 * 256 * (256 + 128), 256 * 4 * 256 * 4
    assert c.unit_chunks(1, 256, step, 16, u, steps=20) is None
    assert c.unit_chunks(1, 256, step, 16, u, steps=254) == halves


def test_row_chunks_cost_rule(monkeypatch):
    """A few chunks per thread, or one per thread when the recurrent kernel does not fit in half
    of L2 (every chunk streams all of it at every step)."""
    monkeypatch.setattr(_common, "max_threads", lambda: 2)
    monkeypatch.setattr(_common, "L2_BYTES", 2 << 20)
    flops = 10 * _common._MIN_FLOPS_TO_SPLIT
    assert _common.row_chunks(256, flops) == [(i * 32, i * 32 + 32) for i in range(8)]
    assert _common.row_chunks(256, flops, 1 << 20) == [(i * 32, i * 32 + 32) for i in range(8)]
    assert _common.row_chunks(256, flops, (1 << 20) + 4) == [(0, 128), (128, 256)]
    assert _common.row_chunks(32, flops) == [(0, 8), (8, 16), (16, 24), (24, 32)]
    assert _common.row_chunks(15, flops) == [(0, 15)]                # too few rows to split
    # a multiple of the threads: never one thread with a chunk more than the other
    assert _common.row_chunks(24, flops) == [(0, 12), (12, 24)]
    assert len(_common.row_chunks(40, flops)) == 4 and len(_common.row_chunks(56, flops)) == 6
    monkeypatch.setattr(_common, "max_threads", lambda: 3)
    assert len(_common.row_chunks(40, flops)) == 3 and len(_common.row_chunks(64, flops)) == 6
    assert _common.row_chunks(256, _common._MIN_FLOPS_TO_SPLIT / 2) == [(0, 256)]


def test_cache_sizes_are_read_or_assumed():
    assert 64 << 10 <= _common.L2_BYTES <= 1 << 30
    assert 4 << 10 <= _common.L1_BYTES <= 4 << 20 and _common.L1_BYTES < _common.L2_BYTES


def test_concurrent_unit_split_calls_never_wait_on_each_other(monkeypatch):
    """Three threads per call, six calls from three Python threads at once: each call's
    threads are its own (a shared pool could start two calls' first threads and queue the
    rest, and both would wait forever)."""
    monkeypatch.setattr(_common, "max_threads", lambda: 3)
    monkeypatch.setattr(_common, "_MIN_STEP_FLOPS_TO_SPLIT_UNITS", 0.0)
    monkeypatch.setattr(_common, "_MIN_SECONDS_TO_SPLIT_UNITS", 0.0)
    monkeypatch.setattr(_common, "_SPLIT_WEIGHTS_PAST_L1", 0.0)
    monkeypatch.setattr(_common, "L1_BYTES", 1 << 10)   # three L1-sized shares and more
    problems = [_problem(LSTM, 2, 9, 3, 48, np.float64, seed=s) for s in range(6)]
    assert len(_common.unit_chunks(2, 48, 1e9, 16, 48 * 192 * 8)) == 3

    def call(p):
        x, W, U, b, states, mask = p
        return run_cell(LSTM, x, W, U, b, states, mask, LoopOptions(), "tanh", "sigmoid")[1]

    want = [call(p) for p in problems]
    with ThreadPoolExecutor(3) as pool:
        got = list(pool.map(call, problems * 2, timeout=120))
    for i, g in enumerate(got):
        np.testing.assert_array_equal(g, want[i % len(problems)])


@numba.njit(nogil=True)
def _meetings(sync, log, me, threads, steps):
    """Write step s, meet, check that every thread wrote step s; -1 - s on a violation."""
    for s in range(steps):
        log[me, s] = s
        if not meet(sync, threads, s + 1):
            return s
        for other in range(threads):
            if log[other, s] != s:
                return -1 - s
    return steps


@pytest.mark.parametrize("spins", ["as configured", "none"])
def test_meet_lets_no_thread_ahead_and_a_stop_releases_the_waiters(spins):
    """``none``: no spinning at any meeting (sync[10], sync[11] = 0), so every wait goes
    through the futex sleep and its wake-up."""
    steps = 20_000 if spins == "as configured" else 2_000
    sync, log = new_sync(), np.full((3, steps), -1, np.int64)
    assert (sync[10], sync[11]) == (_sync.FIRST_SPINS, _sync.SPINS)
    if spins == "none":
        sync[10] = sync[11] = 0
    results = [None] * 3
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(
        i, _meetings(sync, log, i, 3, steps))) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert results == [steps] * 3 and sync[0] == 3 * steps
    # One thread never comes: the stop flag releases the other (it returns at its first meeting).
    sync = new_sync()
    timer = threading.Timer(0.2, lambda: sync.__setitem__(1, 1))
    timer.start()
    assert _meetings(sync, np.zeros((2, 5), np.int64), 0, 2, 5) == 0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind", [LSTM, GRU, GRU_BEFORE, SIMPLE_RNN])
def test_a_small_batch_split_by_rows_gives_the_one_thread_bits(kind, dtype, monkeypatch):
    """B from 8 to 15: one chunk of rows per thread (small_batch_rows), each thread its own
    rows through the whole loop, no meeting: the same bits as one thread."""
    cases = [(8, LoopOptions(), ("tanh", "sigmoid")),
             (9, LoopOptions(go_backwards=True, zero_output_for_mask=True), ("relu", "hard_sigmoid")),
             (15, LoopOptions(return_all_outputs=False), ("tanh", "sigmoid"))]
    for B, options, activations in cases:
        problem = (kind, _problem(kind, B, 120, 5, 64, dtype, seed=B))   # enough work to split
        one, one_chunks = _run(problem, options, activations, False, monkeypatch)
        rows, row_chunks = _run(problem, options, activations, False, monkeypatch, small_rows=True)
        assert one_chunks == [(0, B, 0, 64)]
        assert len(row_chunks) == 2 and all(c[2:] == (0, 64) for c in row_chunks)
        assert row_chunks[0][0] == 0 and row_chunks[0][1] == row_chunks[1][0] and row_chunks[1][1] == B
        for a, b in zip(one, rows):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind", [LSTM, GRU, GRU_BEFORE, SIMPLE_RNN])
def test_two_or_three_rows_a_thread_give_the_one_thread_bits(kind, dtype, monkeypatch):
    """B from 4 to 7 with a recurrent kernel in L1 (small_batch_rows' two rows a thread): the
    same bits as one thread, masks and every flag included."""
    monkeypatch.setattr(_common, "L1_BYTES", 1 << 30)            # any kernel counts as in L1
    monkeypatch.setattr(_common, "_MIN_FLOPS_FOR_TINY_ROWS", 0.0)
    monkeypatch.setattr(_common, "_MIN_FLOPS_TO_SPLIT", 0.0)
    cases = [(4, LoopOptions(), ("tanh", "sigmoid")),
             (5, LoopOptions(go_backwards=True, zero_output_for_mask=True), ("relu", "hard_sigmoid")),
             (7, LoopOptions(return_all_outputs=False, time_major=True), ("tanh", "sigmoid"))]
    for B, options, activations in cases:
        problem = (kind, _problem(kind, B, 60, 5, 32, dtype, seed=B))
        if options.time_major:
            x = problem[1][0]
            problem = (kind, (np.ascontiguousarray(x.transpose(1, 0, 2)), *problem[1][1:]))
        one, one_chunks = _run(problem, options, activations, False, monkeypatch)
        rows, row_chunks = _run(problem, options, activations, False, monkeypatch, small_rows=True)
        assert one_chunks == [(0, B, 0, 32)]
        assert [c[:2] for c in row_chunks] == {4: [(0, 2), (2, 4)], 5: [(0, 2), (2, 5)],
                                               7: [(0, 4), (4, 7)]}[B]
        for a, b in zip(one, rows):
            np.testing.assert_array_equal(a, b)


def test_small_batch_rows_rule(monkeypatch):
    monkeypatch.setattr(_common, "max_threads", lambda: 2)
    monkeypatch.setattr(_common, "L2_BYTES", 1 << 20)
    enough = _common._MIN_FLOPS_TO_SPLIT
    fits = 1 << 20
    assert _common.small_batch_rows(8, enough, fits) == [(0, 4), (4, 8)]
    assert _common.small_batch_rows(9, enough, fits) == [(0, 4), (4, 9)]
    assert _common.small_batch_rows(12, enough, fits) == [(0, 6), (6, 12)]
    assert _common.small_batch_rows(7, enough, fits) == [(0, 7)]        # 3 rows a thread
    assert _common.small_batch_rows(8, enough / 2, fits) == [(0, 8)]    # too little work
    assert _common.small_batch_rows(8, enough, fits + 4) == [(0, 8)]    # U past L2: units
    monkeypatch.setattr(_common, "max_threads", lambda: 1)
    assert _common.small_batch_rows(8, enough, fits) == [(0, 8)]
    monkeypatch.setattr(_common, "max_threads", lambda: 3)
    assert _common.small_batch_rows(12, enough, fits) == [(0, 4), (4, 8), (8, 12)]


def test_small_batch_rows_of_two_for_a_kernel_in_l1(monkeypatch):
    """Batches of 4-7 rows: 2 or 3 rows a thread when the recurrent kernel takes at most half of
    L1 and the call has _MIN_FLOPS_FOR_TINY_ROWS flops; else one thread (or the unit split)."""
    monkeypatch.setattr(_common, "max_threads", lambda: 2)
    monkeypatch.setattr(_common, "L1_BYTES", 48 << 10)
    monkeypatch.setattr(_common, "L2_BYTES", 1 << 20)
    long_call = _common._MIN_FLOPS_FOR_TINY_ROWS
    in_l1 = 24 << 10
    assert _common.small_batch_rows(4, long_call, in_l1) == [(0, 2), (2, 4)]
    assert _common.small_batch_rows(5, long_call, in_l1) == [(0, 2), (2, 5)]
    assert _common.small_batch_rows(7, long_call, in_l1) == [(0, 4), (4, 7)]
    assert _common.small_batch_rows(3, long_call, in_l1) == [(0, 3)]          # 1 row a thread
    assert _common.small_batch_rows(4, long_call / 2, in_l1) == [(0, 4)]      # too short a call
    assert _common.small_batch_rows(4, long_call, in_l1 + 4) == [(0, 4)]      # past half of L1
    assert _common.small_batch_rows(8, long_call, in_l1) == [(0, 4), (4, 8)]  # 4 a thread, as before


def test_the_reverse_loop_keeps_four_rows_a_thread(monkeypatch):
    """The backward's reverse loop never takes small_batch_rows' two rows a thread (it gained
    nothing there): a batch of 4-7 rows stays on one thread where the forward splits it."""
    from gpukb.kernels.cpu import backward

    monkeypatch.setattr(_common, "max_threads", lambda: 2)
    monkeypatch.setattr(_common, "L1_BYTES", 1 << 30)
    monkeypatch.setattr(_common, "_MIN_FLOPS_FOR_TINY_ROWS", 0.0)
    dt = np.dtype(np.float32)
    forward = _common.small_batch_rows(6, 1e9, 32 * 128 * 4)
    chunks, sync, _ = backward._chunks(LSTM, 6, 32, 128, 1000, dt)
    assert forward == [(0, 4), (4, 6)]
    assert chunks == [(0, 6, 0, 32)] and sync is None
    chunks, _, _ = backward._chunks(LSTM, 8, 32, 128, 1000, dt)
    assert [c[:2] for c in chunks] == [(0, 4), (4, 8)]
