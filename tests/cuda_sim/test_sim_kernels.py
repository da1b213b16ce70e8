"""Each CUDA kernel under the simulator against the float64 NumPy reference (or, for the generic
masking kernel, bitwise against gpukb's generic loop), with hypothesis over shapes, masks and flags.
"""

from __future__ import annotations

import numpy as np
import optree
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import gpukb
from gpukb import _rnn
from gpukb.backends import _cuda_cells as cells
from gpukb.backends import _cuda_generic as generic
from gpukb.kernels.cuda import _runtime, persistent
from gpukb.testing.reference import rnn_reference
from gpukb.testing.strategies import MASK_KINDS, rnn_problems

KERNEL_EXAMPLES = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ACTIVATIONS = ["tanh", "sigmoid", "hard_sigmoid", "relu", "linear"]
KINDS = ["lstm", "gru", "gru_before", "simple_rnn"]


def test_runs_under_the_simulator():
    assert _runtime.simulator_enabled()
    assert gpukb.get_backend("cuda").simulated


def tolerance(dtype):
    return dict(rtol=2e-4, atol=2e-5) if np.dtype(dtype) == np.float32 else dict(rtol=1e-10, atol=1e-12)


def make_cell(kind, rng, D, H, dtype, use_bias, activation, recurrent_activation):
    gates = {"lstm": 4, "gru": 3, "gru_before": 3, "simple_rnn": 1}[kind]
    kernel = (0.5 * rng.standard_normal((D, gates * H)) / np.sqrt(D)).astype(dtype)
    recurrent = (0.5 * rng.standard_normal((H, gates * H)) / np.sqrt(H)).astype(dtype)
    bias_shape = (2, 3 * H) if kind == "gru" else (gates * H,)
    bias = (0.1 * rng.standard_normal(bias_shape)).astype(dtype) if use_bias else None
    if kind == "lstm":
        return gpukb.cells.lstm(kernel, recurrent, bias, activation, recurrent_activation)
    if kind in ("gru", "gru_before"):
        return gpukb.cells.gru(kernel, recurrent, bias, kind == "gru", activation, recurrent_activation)
    return gpukb.cells.simple_rnn(kernel, recurrent, bias, activation)


@st.composite
def cell_cases(draw, max_batch=4):
    kind = draw(st.sampled_from(KINDS))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    B, T = draw(st.integers(1, max_batch)), draw(st.integers(1, 5))
    D, H = draw(st.integers(1, 4)), draw(st.integers(1, 6))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    cell = make_cell(kind, rng, D, H, dtype, draw(st.booleans()), draw(st.sampled_from(ACTIVATIONS)),
                     draw(st.sampled_from(ACTIVATIONS)))
    time_major = draw(st.booleans())
    x = rng.standard_normal((T, B, D) if time_major else (B, T, D)).astype(dtype)
    states = [rng.standard_normal((B, H)).astype(dtype) for _ in cell.state_size]
    options = dict(go_backwards=draw(st.booleans()), time_major=time_major,
                   zero_output_for_mask=draw(st.booleans()), return_all_outputs=draw(st.booleans()))
    mask_kind = draw(st.sampled_from(["none", "random", "lengths", "all_masked", "first_masked"]))
    if mask_kind == "lengths":
        options["input_length"] = np.array(draw(st.lists(st.integers(0, T), min_size=B, max_size=B)))
    elif mask_kind != "none":
        valid = rng.random((B, T)) < 0.6
        if mask_kind == "all_masked":
            valid[draw(st.integers(0, B - 1))] = False
        elif mask_kind == "first_masked":
            valid[:, T - 1 if options["go_backwards"] else 0] = False
        options["mask"] = valid.T if time_major else valid
    return cell, x, states, options


def check_against_reference(cell, x, states, options, result):
    cell64 = cell.converted(lambda w: np.asarray(w, np.float64))
    expected = rnn_reference(cell64, x.astype(np.float64), [s.astype(np.float64) for s in states], **options)
    last, outputs, new_states = result
    tol = tolerance(x.dtype)
    np.testing.assert_allclose(outputs, expected[1], **tol, err_msg="outputs")
    np.testing.assert_allclose(last, expected[0], **tol, err_msg="last_output")
    assert type(new_states) is list and len(new_states) == len(expected[2])
    for got, want in zip(new_states, expected[2]):
        np.testing.assert_allclose(got, want, **tol, err_msg="states")
    assert outputs.dtype == x.dtype and all(s.dtype == x.dtype for s in new_states)


def prepared(cell, x, states, options):
    return _rnn.prepare(cell, x, [s.copy() for s in states], xp=np, **options)


@KERNEL_EXAMPLES
@given(case=cell_cases())
def test_fused_step_kernels_match_reference(case):
    cell, x, states, options = case
    result = cells.run_cell(prepared(cell, x, states, options), cell, path="step")
    assert cells.last_path() == "step"
    check_against_reference(cell, x, states, options, result)


@KERNEL_EXAMPLES
@given(case=cell_cases(), ksplit=st.integers(1, 4), tile=st.integers(1, 4), coop=st.booleans())
def test_persistent_kernel_matches_reference(case, ksplit, tile, coop):
    cell, x, states, options = case
    B, H = states[0].shape
    # coop: the grid-sync variant, with the single block the simulator can run; else any number
    # of batch tiles (blocks run independently, syncthreads only).
    batch_tile = B if coop else min(tile, B)
    plan_options = dict(unit_tile=H, ksplit=ksplit, batch_tile=batch_tile, coop=coop,
                        max_blocks=1, threads=1024)
    result = cells.run_cell(prepared(cell, x, states, options), cell, path="persistent",
                            plan_options=plan_options)
    plan = cells.last_path()
    assert isinstance(plan, persistent.Plan)
    assert (plan.ksplit, plan.batch_tile, plan.unit_blocks, plan.coop) == (ksplit, batch_tile, 1, coop)
    check_against_reference(cell, x, states, options, result)


@KERNEL_EXAMPLES
@given(case=cell_cases(max_batch=10))
def test_auto_path_picks_persistent_for_small_batches(case):
    cell, x, states, options = case
    B, H = states[0].shape
    # A batch limit of 6 (the default, 32, would make every batch the simulator can run small).
    result = cells.run_cell(prepared(cell, x, states, options), cell, path="auto",
                            plan_options=dict(threads=64, max_batch=6))
    chosen = cells.last_path()
    if B <= 6:
        assert isinstance(chosen, persistent.Plan) and not chosen.coop
    else:
        assert chosen == "step"
    check_against_reference(cell, x, states, options, result)


def test_size_rule_at_the_benchmark_shapes():
    lstm, f32 = persistent.LSTM, 4
    # H=256, B=1: U does not fit one block; 32 blocks of 8 units with a grid sync.
    p = persistent.plan(1, 256, lstm, f32, max_blocks=132)
    assert p is not None and p.coop and p.unit_blocks * p.unit_tile >= 256 and p.blocks <= 132
    assert persistent.shared_bytes(p, 256, lstm, f32) <= persistent.PERSISTENT_SHARED_BYTES
    assert p.threads <= 1024
    p8 = persistent.plan(8, 256, lstm, f32, max_blocks=132)
    assert p8 is not None and p8.batch_tile == 8 and p8.blocks <= 132
    # Small H: one block owns all units, no grid sync.
    small = persistent.plan(4, 32, lstm, f32, max_blocks=132)
    assert small is not None and small.unit_blocks == 1 and not small.coop
    # Larger batches, or weights too big for the co-resident blocks: per-step path.
    assert persistent.plan(32, 512, lstm, f32, max_blocks=132) is None
    assert persistent.plan(persistent.PERSISTENT_MAX_BATCH + 1, 16, lstm, f32, max_blocks=132) is None
    # Many small blocks rather than few large ones (measured on an H200, see the size rule).
    assert (p8.unit_tile, p8.blocks) == (2, 128)
    assert persistent.plan(1, 256, lstm, f32, max_blocks=132).unit_tile == persistent.PERSISTENT_MIN_PAIRS
    assert persistent.plan(1, 1024, lstm, f32, max_blocks=132) is None
    # Without co-resident blocks to spare (the simulator), only one-block tilings qualify.
    assert persistent.plan(1, 256, lstm, f32, max_blocks=1) is None


# --------------------------------------------------------------------------------------------
# The generic loop's masking kernel: bitwise equal to gpukb._rnn.run_generic
# --------------------------------------------------------------------------------------------

def assert_identical(actual, expected):
    a_leaves, a_spec = optree.tree_flatten(actual)
    e_leaves, e_spec = optree.tree_flatten(expected)
    assert a_spec == e_spec
    for a, e in zip(a_leaves, e_leaves):
        assert type(a) is type(e) and a.dtype == e.dtype and a.shape == e.shape
        assert np.array_equal(a, e), (a, e)


MASKED_KINDS = tuple(k for k in MASK_KINDS if k not in ("none", "input_length_int"))


@KERNEL_EXAMPLES
@given(problem=rnn_problems(mask_kinds=MASKED_KINDS))
def test_generic_masking_kernel_equals_the_generic_loop(problem):
    expected = _rnn.run_generic(_rnn.prepare(**problem.kwargs(), xp=np))
    call = _rnn.prepare(**problem.kwargs(), xp=np)
    result = generic.run_masked(call, _runtime.Launcher(np))
    assert_identical(result, expected)


def test_generic_path_without_a_mask_is_the_generic_loop():
    call = _rnn.prepare(lambda x, s: (x, s), np.ones((2, 3, 1)), [np.zeros((2, 1))], xp=np)
    assert generic.run_masked(call, _runtime.Launcher(np)) is NotImplemented


class ManyLeaves:
    """Outputs and states of many dtypes and ranks (more arrays than one launch takes)."""

    dtypes = [np.float32, np.float64, np.int16, np.int64, np.uint8, np.bool_, np.complex64,
              np.float16, "<U2", np.float32, np.int32, np.float64, np.complex128, np.bool_]

    def __init__(self, batch):
        rng = np.random.default_rng(0)
        self.batch = batch
        self.shapes = [(batch,) + tuple(rng.integers(1, 3, size=i % 3)) for i in range(len(self.dtypes))]

    def value(self, i, seed):
        rng = np.random.default_rng(seed)
        dtype = np.dtype(self.dtypes[i])
        raw = rng.integers(0, 50, size=self.shapes[i])
        if dtype.kind == "U":
            return raw.astype(str).astype(dtype)
        if dtype.kind == "c":
            return (raw + 1j * raw[..., ::-1]).astype(dtype)
        return raw.astype(dtype)

    def initial(self):
        return [self.value(i, 1000 + i) for i in range(len(self.dtypes))]

    def __call__(self, x, states):
        t = int(x[0, 0])
        new = [self.value(i, 7 * t + i) for i in range(len(self.dtypes))]
        output = {"a": new[0] * 2, "b": [new[2], new[8]], "c": new[12]}
        return output, new


@pytest.mark.parametrize("zero_output_for_mask", [False, True])
@pytest.mark.parametrize("return_all_outputs", [False, True])
def test_generic_masking_kernel_many_leaves_and_dtypes(zero_output_for_mask, return_all_outputs):
    B, T = 3, 4
    step = ManyLeaves(B)
    x = np.broadcast_to(np.arange(T, dtype=np.float64)[None, :, None], (B, T, 1)).copy()
    mask = np.random.default_rng(3).random((B, T)) < 0.5
    kwargs = dict(mask=mask, go_backwards=True, zero_output_for_mask=zero_output_for_mask,
                  return_all_outputs=return_all_outputs)
    expected = _rnn.run_generic(_rnn.prepare(step, x, step.initial(), xp=np, **kwargs))
    result = generic.run_masked(_rnn.prepare(step, x, step.initial(), xp=np, **kwargs),
                                _runtime.Launcher(np))
    assert_identical(result, expected)
    assert len(step.dtypes) * 3 > generic.MAX_ARRAYS_PER_LAUNCH  # the states alone need 2+ launches


def test_generic_masking_kernel_with_strided_and_aliased_leaves():
    """Steps that return views of their inputs (strided slices) and their own states unchanged."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 5, 4))
    states = [rng.standard_normal((3, 2)), rng.standard_normal((3, 2, 3)).transpose(0, 2, 1)]

    def step(xt, s):
        return (xt[:, ::2], {"v": s[1][:, 1]}), [s[0] + xt[:, 1:3], s[1]]

    for zero_out in (False, True):
        kwargs = dict(mask=rng.random((3, 5)) < 0.5, zero_output_for_mask=zero_out, xp=np)
        expected = _rnn.run_generic(_rnn.prepare(step, x, states, **kwargs))
        result = generic.run_masked(_rnn.prepare(step, x, states, **kwargs), _runtime.Launcher(np))
        assert_identical(result, expected)
