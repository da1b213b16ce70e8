"""rnn_vjp(..., recompute=True): the same values and gradients as without it, bitwise, while the
pullback holds no more than the arguments and every step's output (fused cpu cells: no kept
pre-activations or cell states; the generic path: no tape of step pullbacks; a plugin's fused
vjp: its backward dropped after the forward), and each pullback call runs the forward once more.
The flag's errors come before any work. (The cuda backend's case: tests/cuda_sim/test_sim_vjp.py.)
"""

import gc
import weakref

import numpy as np
import pytest

import gpukb
from gpukb import _dispatch

from helpers import cell_of_kind

B, T, D, H = 3, 5, 4, 4


def _cell(kind, rng):
    return cell_of_kind(kind, rng, D, H)


def _leaves(grads):
    return [grads.inputs, *grads.initial_states, *grads.weights.values()]


def _assert_same(a, b):
    assert len(a) == len(b)
    for left, right in zip(a, b):
        np.testing.assert_array_equal(left, right)


def _cotangents(rng, result):
    last, outputs, new_states = result
    return (rng.standard_normal(outputs.shape), rng.standard_normal(last.shape),
            [rng.standard_normal(s.shape) for s in new_states])


CASES = [
    ("lstm", {}), ("gru", {"go_backwards": True, "return_all_outputs": False}),
    ("gru_before", {"zero_output_for_mask": True, "time_major": True}),
    ("simple_rnn", {"go_backwards": True}),
]


@pytest.mark.parametrize("kind,flags", CASES)
def test_fused_cpu_recompute_is_bitwise_and_keeps_only_the_outputs(kind, flags, monkeypatch):
    rng = np.random.default_rng(0)
    cell, n_states = _cell(kind, rng)
    tm = flags.get("time_major", False)
    x = rng.standard_normal((T, B, D) if tm else (B, T, D))
    states = [rng.standard_normal((B, H)) for _ in range(n_states)]
    mask = rng.random((B, T)) < 0.6
    mask[0, 0] = False
    args = (cell, x, states)
    options = dict(flags, mask=mask.T.copy() if tm else mask)
    result, pullback = gpukb.rnn_vjp(*args, **options)

    from gpukb.kernels.cpu import cells as cpu_cells
    forwards = []
    run_cell = cpu_cells.run_cell
    monkeypatch.setattr(cpu_cells, "run_cell",
                        lambda *a, **k: forwards.append(1) or run_cell(*a, **k))
    recomputed_result, recomputed = gpukb.rnn_vjp(*args, **options, recompute=True)
    _assert_same([recomputed_result[0], recomputed_result[1], *recomputed_result[2]],
                 [result[0], result[1], *result[2]])

    # What the pullback holds: every step's output, and no kept buffer (the other one keeps them).
    assert pullback.residuals is not None and len(pullback.residuals) > 0
    assert recomputed.residuals is None and recomputed.backward.kept is None
    assert recomputed.backward.every.shape == ((T, B, H) if tm else (B, T, H))

    cotangents = _cotangents(rng, result)
    want = _leaves(pullback(*cotangents))
    forwards.clear()
    _assert_same(_leaves(recomputed(*cotangents)), want)
    # One more forward per pullback call; a SimpleRNN keeps nothing, so it needs none.
    assert len(forwards) == (0 if kind == "simple_rnn" else 1)
    _assert_same(_leaves(recomputed(*cotangents)), want)   # callable again, the same bits


# Items kept per sample, step and unit (README, "Gradients": the outputs plus the kept
# pre-activations and LSTM cell states), and with recompute the outputs alone.
KEPT_ITEMS = {"lstm": 1 + 5, "gru": 1 + 6, "gru_before": 1 + 3, "simple_rnn": 1}


@pytest.mark.parametrize("kind", sorted(KEPT_ITEMS))
def test_the_readme_memory_per_call_is_the_residual_specs(kind):
    rng = np.random.default_rng(1)
    cell, n_states = _cell(kind, rng)
    x = np.zeros((B, T, D))
    specs = gpukb.rnn_residual_specs(cell, x, [np.zeros((B, H))] * n_states)
    items = sum(int(np.prod(shape)) for shape, _ in specs)
    assert items == KEPT_ITEMS[kind] * B * T * H


class _Step:
    """h' = tanh(x + a * h) with a constant a, carrying its vjp; counts its calls and keeps a
    weak reference to every step pullback it made (to see which are still held)."""

    def __init__(self):
        self.calls = 0
        self.made = []

    def __call__(self, x, states):
        h, a = states
        new_h = np.tanh(x + a * h)
        return new_h, [new_h]

    def vjp(self, x, states):
        self.calls += 1
        h, a = states
        new_h = np.tanh(x + a * h)

        def step_pullback(d_output, d_new_states):
            d_pre = (d_output + d_new_states[0]) * (1 - new_h ** 2)
            return d_pre, [a * d_pre, (d_pre * h).sum(axis=0)]

        self.made.append(weakref.ref(step_pullback))
        return (new_h, [new_h]), step_pullback

    def alive(self):
        gc.collect()
        return sum(ref() is not None for ref in self.made)


def test_generic_recompute_keeps_no_tape_and_gives_the_same_bits():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((B, T, H))
    states = [rng.standard_normal((B, H))]
    mask = rng.random((B, T)) < 0.6
    mask[1, 0] = False
    options = dict(constants=[np.full(H, 0.5)], mask=mask, go_backwards=True,
                   return_all_outputs=False)
    step = _Step()
    result, pullback = gpukb.rnn_vjp(step, x, states, **options)
    assert step.alive() == T   # the tape: every step's pullback
    cotangents = _cotangents(rng, result)
    want = pullback(*cotangents)

    step = _Step()
    recomputed_result, recomputed = gpukb.rnn_vjp(step, x, states, **options, recompute=True)
    _assert_same([recomputed_result[0], recomputed_result[1], *recomputed_result[2]],
                 [result[0], result[1], *result[2]])
    assert step.calls == T and step.alive() == 0   # the values of the vjp; no tape kept
    got = recomputed(*cotangents)
    assert step.calls == 2 * T and step.alive() == 0   # recorded again, and dropped
    _assert_same(_leaves(got) + list(got.constants), _leaves(want) + list(want.constants))


class _PluginBackend(gpukb.Backend):
    """A plugin with a fused vjp it cannot be told to keep less in (the cpu's fused kernels)."""

    name = "recompute_test_plugin"
    array_types = ("numpy:ndarray",)

    def __init__(self):
        super().__init__()
        self.backwards = []

    def _load_xp(self):
        return np

    def fused_rnn_vjp(self, call):
        from gpukb._vjp.fused_cpu import fused_cell_vjp

        result, backward = fused_cell_vjp(call)
        self.backwards.append(weakref.ref(backward))
        return result, backward

    def alive(self):
        gc.collect()
        return sum(ref() is not None for ref in self.backwards)


def test_a_plugins_fused_vjp_is_replayed_by_each_pullback_call(monkeypatch):
    rng = np.random.default_rng(3)
    cell, _ = _cell("lstm", rng)
    x = rng.standard_normal((B, T, D))
    states = [rng.standard_normal((B, H)) for _ in range(2)]
    plugin = _PluginBackend()
    monkeypatch.setattr(_dispatch, "select_backend", lambda leaves, backend=None: plugin)
    result, pullback = gpukb.rnn_vjp(cell, x, states)
    cotangents = _cotangents(rng, result)
    want = _leaves(pullback(*cotangents))
    del pullback
    assert plugin.alive() == 0

    recomputed_result, recomputed = gpukb.rnn_vjp(cell, x, states, recompute=True)
    _assert_same(recomputed_result[1:2], result[1:2])
    assert len(plugin.backwards) == 2 and plugin.alive() == 0   # the forward's vjp, dropped
    _assert_same(_leaves(recomputed(*cotangents)), want)
    assert len(plugin.backwards) == 3 and plugin.alive() == 0   # run again, dropped again


def test_a_plugin_rnn_vjp_without_the_new_keywords_still_serves_default_calls(monkeypatch):
    class OldPlugin(_PluginBackend):
        def rnn_vjp(self, step_function, inputs, initial_states, go_backwards=False, mask=None,
                    constants=None, unroll=False, input_length=None, time_major=False,
                    zero_output_for_mask=False, return_all_outputs=True):
            return "served"

    monkeypatch.setattr(_dispatch, "select_backend", lambda leaves, backend=None: OldPlugin())
    assert gpukb.rnn_vjp(_Step(), np.zeros((B, T, H)), [np.zeros((B, H))]) == "served"


@pytest.mark.parametrize("value", ["yes", 1, None, np.array(True)])
def test_recompute_must_be_a_bool(value):
    with pytest.raises(TypeError, match=r"recompute must be a bool"):
        gpukb.rnn_vjp(_Step(), np.zeros((B, T, H)), [np.zeros((B, H))], recompute=value)


def test_return_residuals_must_be_a_bool():
    with pytest.raises(TypeError, match=r"return_residuals must be a bool"):
        gpukb.rnn_vjp(_Step(), np.zeros((B, T, H)), [np.zeros((B, H))], return_residuals="no")


def test_recompute_with_return_residuals_is_a_value_error_before_any_work(monkeypatch):
    def no_backend(*args, **kwargs):
        raise AssertionError("a backend was chosen")

    monkeypatch.setattr(_dispatch, "select_backend", no_backend)
    step = _Step()
    with pytest.raises(ValueError, match=r"return_residuals=True and recompute=True"):
        gpukb.rnn_vjp(step, np.zeros((B, T, H)), [np.zeros((B, H))], return_residuals=True,
                      recompute=np.True_)
    assert step.calls == 0
    # The Backend method checks too (a caller that holds a backend).
    with pytest.raises(ValueError, match=r"return_residuals=True and recompute=True"):
        gpukb.get_backend("cpu").rnn_vjp(step, np.zeros((B, T, H)), [np.zeros((B, H))],
                                         return_residuals=True, recompute=True)
    assert step.calls == 0
