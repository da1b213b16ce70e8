"""The CPU's fused backward (gpukb.kernels.cpu.backward) on more than one thread and at sizes whose
weight gradients fill whole vector blocks of its summed-products kernel: a large batch split by
rows, a small one by units (the threads meet every step), against the generic path in float64
(an implementation with no kernel of its own), and recomputation against kept pre-activations."""

import numpy as np
import pytest

import gpukb
from gpukb.kernels.cells import GRU, GRU_BEFORE, LSTM, SIMPLE_RNN
from gpukb.kernels.cpu import _common, backward, run_cell
from gpukb.kernels.options import LoopOptions

from test_rnn_vjp import cell_weights, generic_vjp, make_cell

CASES = [("lstm", True), ("gru", True), ("gru", False), ("simple_rnn", True)]


def _problem(kind, reset_after, B, T, D, H, dtype, seed=0):
    rng = np.random.default_rng(seed)
    weights = {k: v.astype(dtype) for k, v in cell_weights(kind, D, H, rng, reset_after).items()}
    cell = make_cell(kind, weights, reset_after=reset_after)
    x = rng.standard_normal((B, T, D)).astype(dtype)
    states = [rng.standard_normal((B, H)).astype(dtype) for _ in cell.state_size]
    mask = rng.random((B, T)) < 0.75
    mask[0, :2] = False   # a sample whose first steps are masked
    d_out = rng.standard_normal((B, T, H)).astype(dtype)
    d_states = [rng.standard_normal((B, H)).astype(dtype) for _ in states]
    return cell, x, states, mask, d_out, d_states


def _gradients(pullback, d_out, d_states):
    grads = pullback(d_out, d_new_states=d_states)
    return [grads.inputs, *grads.initial_states, *grads.weights.values()]


@pytest.mark.parametrize("split", ["rows", "small batch rows", "units"])
@pytest.mark.parametrize("kind,reset_after", CASES)
def test_split_backward_matches_the_generic_path(kind, reset_after, split, monkeypatch):
    B, H = {"rows": (18, 40), "small batch rows": (9, 40), "units": (5, 64)}[split]
    problem = _problem(kind, reset_after, B, 6, 3, H, np.float64)
    cell, x, states, mask, d_out, d_states = problem
    options = dict(mask=mask, go_backwards=True, zero_output_for_mask=False)
    chunks = []
    original = _common.run_chunks

    def spy(fn, args, parts, *rest, **options):
        chunks.append((fn, list(parts)))
        return original(fn, args, parts, *rest, **options)

    with monkeypatch.context() as m:
        m.setattr(_common, "max_threads", lambda: 2)
        m.setattr(_common, "_MIN_FLOPS_TO_SPLIT", 0.0)
        m.setattr(_common, "_MIN_STEP_FLOPS_TO_SPLIT_UNITS", 0.0)
        m.setattr(_common, "_MIN_SECONDS_TO_SPLIT_UNITS", 0.0)
        if split != "small batch rows":   # those need U within L2; units need it past L2
            m.setattr(_common, "L2_BYTES", 0)
            m.setattr(_common, "L1_BYTES", 0)
        m.setattr(_common, "run_chunks", spy)
        _, pullback = gpukb.rnn_vjp(cell, x, states, **options)
        got = _gradients(pullback, d_out, d_states)
    reverse = [parts for fn, parts in chunks if fn is backward._reverse_loop(
        {"lstm": LSTM, "simple_rnn": SIMPLE_RNN}.get(kind, GRU if reset_after else GRU_BEFORE))]
    # GRU without reset_after never splits its units (its step needs all of r * h), as forward;
    # a loop on one thread runs in blocks of steps (backward._BlockSums), a split one at once
    assert reverse and all(parts == reverse[0] for parts in reverse)
    if split == "units" and not reset_after:
        assert reverse[0] == [(0, B, 0, H)] and len(reverse) == 6   # T = 6: a block per step
    else:
        assert len(reverse[0]) > 1 and (reverse[0][0][3] < H) == (split == "units"), reverse
    if split == "small batch rows":   # one chunk of rows per thread
        assert [part[:2] for part in reverse[0]] == [(0, 4), (4, 9)]
    _, generic_pullback = generic_vjp(cell, x, states, **options)
    want = _gradients(generic_pullback, d_out, d_states)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind,reset_after", CASES)
def test_float32_backward_near_float64(kind, reset_after):
    got, want = (
        _gradients(gpukb.rnn_vjp(cell, x, states, mask=mask)[1], d_out, d_states)
        for cell, x, states, mask, d_out, d_states in
        (_problem(kind, reset_after, 4, 7, 3, 40, dtype) for dtype in (np.float32, np.float64)))
    for a, b in zip(got, want):
        assert a.dtype == np.float32
        np.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-4 * np.abs(b).max())


@pytest.mark.parametrize("kind", [LSTM, GRU, GRU_BEFORE])
def test_recomputation_gives_the_kept_results(kind):
    """cell_backward without what the forward kept runs the forward again: the same bits."""
    rng = np.random.default_rng(3)
    B, T, D, H = 3, 5, 2, 16
    G = 4 if kind == LSTM else 3
    x = rng.standard_normal((B, T, D))
    W, U = rng.standard_normal((D, G * H)) * 0.5, rng.standard_normal((H, G * H)) * 0.3
    b = rng.standard_normal((2, G * H) if kind == GRU else (G * H,))
    states = [rng.standard_normal((B, H)) for _ in range(2 if kind == LSTM else 1)]
    mask = rng.random((T, B)) < 0.7
    options = LoopOptions(go_backwards=True)
    kept = backward.kept_buffers(kind, T, B, H, np.float64)
    _, out, _ = run_cell(kind, x, W, U, b, states, mask, options, "tanh", "sigmoid", kept=kept)
    plain = run_cell(kind, x, W, U, b, states, mask, options, "tanh", "sigmoid")[1]
    np.testing.assert_array_equal(out, plain)   # keeping changes no output
    gy = rng.standard_normal(out.shape)   # the outputs' layout
    d_states = [rng.standard_normal((B, H)) for _ in states]
    args = (kind, x, W, U, b, states, mask, options, "tanh", "sigmoid", out, gy, d_states)
    with_kept = backward.cell_backward(*args, kept)
    recomputed = backward.cell_backward(*args)
    for name in ("inputs", "kernel", "recurrent_kernel", "bias"):
        np.testing.assert_array_equal(with_kept[name], recomputed[name])
    for a, c in zip(with_kept["states"], recomputed["states"]):
        np.testing.assert_array_equal(a, c)


@pytest.mark.parametrize("kind", [LSTM, GRU, GRU_BEFORE, SIMPLE_RNN])
@pytest.mark.parametrize("time_major,go_backwards", [(False, True), (True, False)])
def test_block_sums_on_a_second_thread_give_one_threads_bits(kind, time_major, go_backwards,
                                                              monkeypatch):
    """A small batch's reverse loop runs on one thread, and a second thread adds up the weight
    gradients block by block behind it (backward._BlockSums): the same bits as on one thread
    (whose values test_rnn_vjp.py and the test above compare with the generic path)."""
    rng = np.random.default_rng(5)
    B, T, D, H = 3, 11, 5, 16
    G = {LSTM: 4, SIMPLE_RNN: 1}.get(kind, 3) * H
    x = rng.standard_normal((T, B, D) if time_major else (B, T, D))
    W, U = rng.standard_normal((D, G)) * 0.5, rng.standard_normal((H, G)) * 0.3
    b = rng.standard_normal((2, G) if kind == GRU else (G,))
    states = [rng.standard_normal((B, H)) for _ in range(2 if kind == LSTM else 1)]
    mask = rng.random((T, B)) < 0.7
    options = LoopOptions(go_backwards=go_backwards, time_major=time_major)
    _, out, _ = run_cell(kind, x, W, U, b, states, mask, options, "tanh", "sigmoid")
    gy = rng.standard_normal(out.shape)   # the outputs' layout
    d_states = [rng.standard_normal((B, H)) for _ in states]
    args = (kind, x, W, U, b, states, mask, options, "tanh", "sigmoid", out, gy, d_states)
    reserved = []
    original = _common._reserve_workers
    results = {}
    for threads in (1, 2):
        with monkeypatch.context() as m:
            m.setattr(_common, "max_threads", lambda: threads)
            m.setattr(_common, "_MIN_FLOPS_TO_SPLIT", 0.0)
            m.setattr(_common, "_reserve_workers", lambda n: reserved.append(n) or original(n))
            results[threads] = backward.cell_backward(*args)
    assert reserved == [1]   # the sums ran on a thread of their own with two threads
    for name in ("inputs", "kernel", "recurrent_kernel", "bias"):
        np.testing.assert_array_equal(results[1][name], results[2][name])
    assert len(backward._BlockSums(
        [(x, None, G, G)], np.float64, T, B, time_major, True).blocks) == 6   # blocks of 2 steps


def test_summed_runs_add_runs_of_rows():
    """summed_runs adds, onto z, the products of several runs of rows a fixed stride apart (a
    batch-major layout's steps [t0, t1) of every sample), A's columns from one array or two
    side by side (x and h), against float64."""
    from gpukb.kernels.cpu._gemm_sums import block_columns, summed_runs

    rng = np.random.default_rng(4)
    dtype = np.float32
    B, T, M, M2, N = 3, 9, 7, 5, 2 * block_columns(dtype) + 3
    a = rng.standard_normal((B, T, M)).astype(dtype)
    a2 = rng.standard_normal((B, T, M2)).astype(dtype)
    u = rng.standard_normal((B, T, N + 2)).astype(dtype)   # rows N + 2 apart
    t0, t1 = 2, 7
    rows_u = u[:, t0:t1, :N].reshape(-1, N).astype(np.float64)
    for parts in ((a,), (a, a2)):
        first, last = parts[0], parts[-1]
        rows = sum(p.shape[-1] for p in parts)
        z0 = rng.standard_normal((rows, N)).astype(dtype)
        z = z0.copy()
        m1, m2 = first.shape[-1], last.shape[-1]
        summed_runs(z, first.reshape(-1)[t0 * m1:], m1, T * m1, last.reshape(-1)[t0 * m2:], m2,
                    T * m2, m1, u.reshape(-1)[t0 * (N + 2):], N + 2, B, T * (N + 2), t1 - t0, 0,
                    N)
        rows_a = np.concatenate([p[:, t0:t1].reshape(-1, p.shape[-1]) for p in parts],
                                axis=1).astype(np.float64)
        np.testing.assert_allclose(z, z0 + rows_a.T @ rows_u, rtol=0, atol=1e-4)


def test_block_sums_stop_with_the_loop(monkeypatch):
    """When the reverse loop raises between blocks (Ctrl-C arrives there), the thread adding up
    the weight gradients stops after its current block before the exception propagates, its
    thread is free again, and the next call gives the same bits as before."""
    rng = np.random.default_rng(6)
    B, T, D, H = 2, 16, 3, 16
    x = rng.standard_normal((B, T, D))
    W, U = rng.standard_normal((D, 4 * H)) * 0.5, rng.standard_normal((H, 4 * H)) * 0.3
    b = rng.standard_normal(4 * H)
    states = [rng.standard_normal((B, H)) for _ in range(2)]
    options = LoopOptions()
    _, out, _ = run_cell(LSTM, x, W, U, b, states, None, options, "tanh", "sigmoid")
    gy = rng.standard_normal(out.shape)   # the outputs' layout
    args = (LSTM, x, W, U, b, states, None, options, "tanh", "sigmoid", out, gy,
            [np.zeros((B, H))] * 2)
    monkeypatch.setattr(_common, "max_threads", lambda: 2)
    monkeypatch.setattr(_common, "_MIN_FLOPS_TO_SPLIT", 0.0)
    before = backward.cell_backward(*args)
    original, calls, added = _common.run_chunks, [], []

    def interrupted(*a, **k):
        if "first" in k:   # a block of the reverse loop (not the forward run again before it)
            calls.append(k["first"])
            if len(calls) == 3:
                raise KeyboardInterrupt
        return original(*a, **k)

    add = backward._BlockSums._add
    monkeypatch.setattr(_common, "run_chunks", interrupted)
    monkeypatch.setattr(backward._BlockSums, "_add", lambda self, *blk: added.append(blk) or
                        add(self, *blk))
    with pytest.raises(KeyboardInterrupt):
        backward.cell_backward(*args)
    assert calls == [0, 2, 4] and added == [(0, 2), (2, 4)]   # blocks of 2 steps, two summed
    monkeypatch.setattr(_common, "run_chunks", original)
    after = backward.cell_backward(*args)
    for name in ("inputs", "kernel", "recurrent_kernel", "bias"):
        np.testing.assert_array_equal(before[name], after[name])
