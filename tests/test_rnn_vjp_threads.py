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


@pytest.mark.parametrize("split", ["rows", "units"])
@pytest.mark.parametrize("kind,reset_after", CASES)
def test_split_backward_matches_the_generic_path(kind, reset_after, split, monkeypatch):
    B, H = (18, 40) if split == "rows" else (5, 64)
    problem = _problem(kind, reset_after, B, 6, 3, H, np.float64)
    cell, x, states, mask, d_out, d_states = problem
    options = dict(mask=mask, go_backwards=True, zero_output_for_mask=False)
    chunks = []
    original = _common.run_chunks

    def spy(fn, args, parts, *rest):
        chunks.append((fn, list(parts)))
        return original(fn, args, parts, *rest)

    with monkeypatch.context() as m:
        m.setattr(_common, "max_threads", lambda: 2)
        m.setattr(_common, "_MIN_FLOPS_TO_SPLIT", 0.0)
        m.setattr(_common, "_MIN_STEP_FLOPS_TO_SPLIT_UNITS", 0.0)
        m.setattr(_common, "_MIN_SECONDS_TO_SPLIT_UNITS", 0.0)
        m.setattr(_common, "L2_BYTES", 0)   # the backward splits units only past L2
        m.setattr(_common, "run_chunks", spy)
        _, pullback = gpukb.rnn_vjp(cell, x, states, **options)
        got = _gradients(pullback, d_out, d_states)
    reverse = [parts for fn, parts in chunks if fn is backward._reverse_loop(
        {"lstm": LSTM, "simple_rnn": SIMPLE_RNN}.get(kind, GRU if reset_after else GRU_BEFORE))]
    # GRU without reset_after never splits its units (its step needs all of r * h), as forward
    assert len(reverse) == 1
    if split == "units" and not reset_after:
        assert reverse[0] == [(0, B, 0, H)]
    else:
        assert len(reverse[0]) > 1 and (reverse[0][0][3] < H) == (split == "units"), reverse
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
    gy = rng.standard_normal((T, B, H))
    d_states = [rng.standard_normal((B, H)) for _ in states]
    args = (kind, x, W, U, b, states, mask, options, "tanh", "sigmoid", out, gy, d_states)
    with_kept = backward.cell_backward(*args, kept)
    recomputed = backward.cell_backward(*args)
    for name in ("inputs", "kernel", "recurrent_kernel", "bias"):
        np.testing.assert_array_equal(with_kept[name], recomputed[name])
    for a, c in zip(with_kept["states"], recomputed["states"]):
        np.testing.assert_array_equal(a, c)
