"""rnn_vjp(return_residuals=True) and rnn_pullback: the pullback rebuilt from the residuals gives
bitwise the gradients of rnn_vjp's own pullback (fused cpu cells, the generic path), runs no
forward on the fused path, and bad residuals are clear errors before any work."""

import numpy as np
import pytest

import gpukb

from helpers import cell_of_kind

B, T, D, H = 3, 5, 4, 6


def _cell(kind, rng, dtype=np.float64):
    return cell_of_kind(kind, rng, D, H, dtype, simple_activation="relu")


def _problem(kind, seed=0, time_major=False):
    rng = np.random.default_rng(seed)
    cell, n_states = _cell(kind, rng)
    x = rng.standard_normal((T, B, D) if time_major else (B, T, D))
    states = [rng.standard_normal((B, H)) for _ in range(n_states)]
    mask = rng.random((B, T)) < 0.6
    mask[0, 0] = False
    return rng, cell, x, states, mask


def _assert_same_grads(a, b):
    for left, right in zip([a.inputs, *a.initial_states, *a.weights.values()],
                           [b.inputs, *b.initial_states, *b.weights.values()]):
        np.testing.assert_array_equal(left, right)
    assert a.weights.keys() == b.weights.keys()


def _cotangents(rng, result, n_states):
    last, outputs, _ = result
    return (rng.standard_normal(outputs.shape), rng.standard_normal(last.shape),
            [rng.standard_normal((B, H)) for _ in range(n_states)])


CASES = [
    ("lstm", {}), ("gru", {"go_backwards": True}), ("gru_before", {"zero_output_for_mask": True}),
    ("simple_rnn", {"return_all_outputs": False}), ("lstm", {"time_major": True,
                                                            "go_backwards": True}),
]


@pytest.mark.parametrize("kind,flags", CASES)
def test_fused_cpu_pullback_from_residuals_is_bitwise_rnn_vjps(kind, flags, monkeypatch):
    rng, cell, x, states, mask = _problem(kind, time_major=flags.get("time_major", False))
    mask_arg = mask.T.copy() if flags.get("time_major") else mask
    result, pullback, residuals = gpukb.rnn_vjp(cell, x, states, mask=mask_arg,
                                                return_residuals=True, **flags)
    assert isinstance(residuals, tuple)
    specs = gpukb.rnn_residual_specs(cell, x, states, mask=mask_arg, **flags)
    assert [(r.shape, r.dtype) for r in residuals] == list(specs)
    # LSTM: outputs, 4H pre-activations, cell states; GRU: 6H/3H; SimpleRNN: outputs only.
    assert len(residuals) == {"lstm": 3, "gru": 2, "gru_before": 2, "simple_rnn": 1}[kind]
    if flags.get("return_all_outputs", True) and not flags.get("go_backwards"):
        assert residuals[0] is result[1]   # every step's output is the result's outputs

    # No forward in the rebuilt pullback: the forward kernel must not run.
    from gpukb.kernels import cpu as kernels

    rebuilt = gpukb.rnn_pullback(residuals, cell, x, states, mask=mask_arg, **flags)

    def no_forward(*args, **kwargs):
        raise AssertionError("the rebuilt pullback ran the forward")

    monkeypatch.setattr(kernels, "run_cell", no_forward)
    d_out, d_last, d_states = _cotangents(rng, result, len(states))
    _assert_same_grads(rebuilt(d_out, d_last, d_states), pullback(d_out, d_last, d_states))


def test_residuals_are_fresh_per_call_and_stay_valid():
    """A pullback rebuilt from one call's residuals ignores a later call's (its own arrays)."""
    rng, cell, x, states, mask = _problem("gru")
    result, pullback, residuals = gpukb.rnn_vjp(cell, x, states, mask=mask, return_residuals=True)
    gpukb.rnn_vjp(cell, 2 * x, states, mask=mask, return_residuals=True)
    d_out = rng.standard_normal(result[1].shape)
    _assert_same_grads(gpukb.rnn_pullback(residuals, cell, x, states, mask=mask)(d_out),
                       pullback(d_out))


class _Linear:
    """A step with its own vjp (the generic path): h' = tanh(x @ W + h)."""

    def __init__(self, w):
        self.w = w

    def __call__(self, x, states):
        h = np.tanh(x @ self.w + states[0])
        return h, [h]

    def vjp(self, x, states):
        h = np.tanh(x @ self.w + states[0])

        def pullback(d_out, d_states):
            dz = (d_out + d_states[0]) * (1 - h * h)
            return dz @ self.w.T, [dz], {"w": x.T @ dz}

        return (h, [h]), pullback


def test_generic_step_has_no_residuals_and_its_rebuilt_pullback_reruns_the_forward():
    rng = np.random.default_rng(3)
    step = _Linear(rng.standard_normal((D, H)))
    x, h0 = rng.standard_normal((B, T, D)), rng.standard_normal((B, H))
    mask = rng.random((B, T)) < 0.7
    result, pullback, residuals = gpukb.rnn_vjp(step, x, [h0], mask=mask, go_backwards=True,
                                                return_residuals=True)
    assert residuals == ()
    assert gpukb.rnn_residual_specs(step, x, [h0], mask=mask, go_backwards=True) == ()
    rebuilt = gpukb.rnn_pullback((), step, x, [h0], mask=mask, go_backwards=True)
    d_out = rng.standard_normal(result[1].shape)
    a, b = rebuilt(d_out), pullback(d_out)
    np.testing.assert_array_equal(a.inputs, b.inputs)
    np.testing.assert_array_equal(a.initial_states[0], b.initial_states[0])
    np.testing.assert_array_equal(a.weights["w"], b.weights["w"])


def test_bad_residuals_are_clear_errors_before_any_work(monkeypatch):
    _, cell, x, states, mask = _problem("lstm")
    _, _, residuals = gpukb.rnn_vjp(cell, x, states, mask=mask, return_residuals=True)
    from gpukb.kernels import cpu as kernels

    monkeypatch.setattr(kernels, "run_cell", None)   # any forward would fail differently

    def rebuild(given):
        return gpukb.rnn_pullback(given, cell, x, states, mask=mask)

    with pytest.raises(TypeError, match="residuals must be the tuple"):
        rebuild(residuals[0])
    with pytest.raises(ValueError, match=r"residuals has 2 array\(s\) but this call keeps 3"):
        rebuild(residuals[:2])
    with pytest.raises(ValueError, match=r"residuals\[1\] must have shape \(5, 3, 24\)"):
        rebuild((residuals[0], residuals[1][:, :2], residuals[2]))
    with pytest.raises(ValueError, match=r"residuals\[2\] must have dtype float64, got float32"):
        rebuild((*residuals[:2], residuals[2].astype(np.float32)))
    with pytest.raises(TypeError, match=r"residuals\[0\] must be an array, got list"):
        rebuild(([1.0], *residuals[1:]))
    with pytest.raises(ValueError, match="but this call keeps 3"):
        gpukb.rnn_pullback((), cell, x, states)   # residuals of another path
