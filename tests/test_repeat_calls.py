"""A cell called again with arguments of the same structure reuses the first call's checks and
plan (gpukb/_repeat_calls.py): same results, same errors, same logged plans, and only plain calls."""

import gc
import weakref

import numpy as np
import pytest

import gpukb
from gpukb import _repeat_calls, _rnn
from gpukb._plan import recorded_plans

D, H = 3, 4


def lstm(rng, dtype=np.float32):
    W = (0.5 * rng.standard_normal((D, 4 * H))).astype(dtype)
    U = (0.5 * rng.standard_normal((H, 4 * H))).astype(dtype)
    b = (0.1 * rng.standard_normal(4 * H)).astype(dtype)
    return gpukb.cells.lstm(W, U, b)


def arguments(rng, B, T, dtype=np.float32):
    return (rng.standard_normal((B, T, D)).astype(dtype),
            [rng.standard_normal((B, H)).astype(dtype) for _ in range(2)])


@pytest.fixture
def prepares(monkeypatch):
    """How many calls were checked in full (gpukb._rnn.prepare)."""
    count = []
    original = _rnn.prepare

    def counting(*args, **kwargs):
        count.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(_rnn, "prepare", counting)
    return count


def fresh_result(cell, x, states, **options):
    """The result of a copy of ``cell`` that has seen no call."""
    twin = gpukb.cells.lstm(cell.kernel.copy(), cell.recurrent_kernel.copy(), cell.bias.copy())
    return gpukb.rnn(twin, x, states, **options)


def assert_same(got, want):
    for a, b in zip([got[0], got[1], *got[2]], [want[0], want[1], *want[2]]):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("frozen", [False, True])
def test_a_repeated_call_reuses_the_checks_and_gives_the_full_paths_results(prepares, frozen):
    rng = np.random.default_rng(0)
    cell = lstm(rng)
    if frozen:
        cell.freeze()
    options = dict(go_backwards=True, return_all_outputs=False)
    gpukb.rnn(cell, *arguments(rng, 2, 5), **options)
    assert len(prepares) == 1
    x, states = arguments(rng, 2, 5)   # new values, same structure
    with recorded_plans() as plans:
        got = gpukb.rnn(cell, x, states, **options)
    assert len(prepares) == 1          # not checked again
    assert [p.path for p in plans] == ["fused_cell"]   # still logged, once per call
    assert isinstance(got[2], list)
    assert_same(got, fresh_result(cell, x, states, **options))   # (one more full check)
    assert len(prepares) == 2
    # a tuple of states, another batch size, other flags: other structures, checked in full
    gpukb.rnn(cell, x, tuple(states))
    gpukb.rnn(cell, *arguments(rng, 3, 5), **options)
    gpukb.rnn(cell, x, states, go_backwards=False)
    assert len(prepares) == 5
    assert isinstance(gpukb.rnn(cell, x, tuple(states))[2], tuple)
    assert len(prepares) == 5


def test_a_call_of_another_structure_still_gets_its_error(prepares):
    rng = np.random.default_rng(1)
    cell = lstm(rng)
    x, states = arguments(rng, 2, 5)
    gpukb.rnn(cell, x, states)
    with pytest.raises(ValueError, match="initial_states|state"):
        gpukb.rnn(cell, x, [states[0][:1], states[1]])
    with pytest.raises(ValueError, match="rank >= 3"):
        gpukb.rnn(cell, x[0], states)
    with pytest.raises(TypeError, match="go_backwards must be a bool"):
        gpukb.rnn(cell, x, states, go_backwards="yes")


@pytest.mark.parametrize("change", ["list mask", "input_length", "constants", "int flag",
                                    "float64 inputs", "nested inputs"])
def test_calls_that_are_not_plain_are_checked_every_time(prepares, change):
    rng = np.random.default_rng(2)
    cell = lstm(rng)
    x, states = arguments(rng, 2, 5)
    options = {}
    if change == "list mask":
        options["mask"] = [[1, 1, 0, 1, 1], [1, 0, 0, 1, 1]]
    elif change == "input_length":
        options["input_length"] = 5
    elif change == "constants":
        options["constants"] = []
    elif change == "int flag":
        options["go_backwards"] = 1
    elif change == "float64 inputs":
        x = x.astype(np.float64)
    assert _repeat_calls.key(cell, [x] if change == "nested inputs" else x, states,
                             dict(mask=None, constants=None, input_length=None, go_backwards=False,
                                  unroll=False, time_major=False, zero_output_for_mask=False,
                                  return_all_outputs=True) | options) is None
    if change == "nested inputs":
        return
    first = gpukb.rnn(cell, x, states, **options)
    second = gpukb.rnn(cell, x, states, **options)
    assert len(prepares) == 2
    assert_same(second, first)
    assert first[1].dtype == np.float32   # float64 inputs: cast to the cell's dtype, as before


def test_masked_calls_reuse_the_checks_and_read_every_calls_mask(prepares):
    rng = np.random.default_rng(7)
    cell = lstm(rng).freeze()
    x, states = arguments(rng, 3, 6)
    masks = [rng.random((3, 6)) < 0.6 for _ in range(3)] + [np.ones((3, 6), bool)]
    for mask in masks:
        got = gpukb.rnn(cell, x, states, mask=mask, zero_output_for_mask=True)
        assert_same(got, fresh_result(cell, x, states, mask=mask, zero_output_for_mask=True))
    assert len(prepares) == 1 + len(masks)   # the first call, and each fresh cell's
    gpukb.rnn(cell, x, states, mask=masks[0].astype(np.int8), zero_output_for_mask=True)
    assert len(prepares) == 2 + len(masks)   # another mask dtype: checked in full
    with pytest.raises(ValueError, match="mask shape"):
        gpukb.rnn(cell, x, states, mask=masks[0][:, :5], zero_output_for_mask=True)
    with pytest.raises(TypeError, match="mask must be a boolean"):
        gpukb.rnn(cell, x, states, mask=masks[0].astype("U1"), zero_output_for_mask=True)


def test_the_reused_plan_does_not_keep_the_callers_arrays_alive():
    rng = np.random.default_rng(3)
    cell = lstm(rng)
    x, states = arguments(rng, 2, 5)
    mask = np.ones((2, 5), bool)
    gpukb.rnn(cell, x, states, mask=mask)
    refs = [weakref.ref(a) for a in (x, *states, mask)]
    del x, states, mask
    gc.collect()
    assert all(r() is None for r in refs)


def test_new_weights_of_a_cell_that_is_not_frozen_are_used(prepares):
    rng = np.random.default_rng(4)
    cell = lstm(rng)
    x, states = arguments(rng, 2, 5)
    first = gpukb.rnn(cell, x, states)
    cell.kernel = (rng.standard_normal((D, 4 * H))).astype(np.float32)
    second = gpukb.rnn(cell, x, states)
    assert len(prepares) == 2   # new weights: planned again
    assert not np.array_equal(first[1], second[1])
    assert_same(second, fresh_result(cell, x, states))


@pytest.mark.parametrize("name, value, error", [
    ("kernel", np.zeros((D + 1, 4 * H), np.float32), "kernel must have shape \\(3, 16\\)"),
    ("recurrent_kernel", np.zeros((H, 4 * H + 1), np.float32), "recurrent_kernel must have shape"),
    ("bias", np.zeros(4 * H, np.float64), "one dtype"),
    ("kernel", np.zeros((D, 4 * H), np.float64), "one dtype; kernel is float64"),
    ("kernel", [[0.0] * 16] * 3, "must be an array"),
])
def test_a_weight_that_does_not_fit_the_cell_is_refused(name, value, error):
    cell = lstm(np.random.default_rng(5))
    before = getattr(cell, name)
    with pytest.raises((ValueError, TypeError), match=error):
        setattr(cell, name, value)
    assert getattr(cell, name) is before
    cell.bias = None   # a cell without a bias is a cell still
    assert not cell.use_bias


def test_the_kept_structures_per_cell_are_bounded(monkeypatch):
    monkeypatch.setattr(_repeat_calls, "MAX_KEYS_PER_CELL", 3)
    rng = np.random.default_rng(5)
    cell = lstm(rng)
    for T in range(1, 8):
        gpukb.rnn(cell, *arguments(rng, 1, T))
        assert 1 <= len(cell._repeat_calls) <= 3


def test_a_frozen_cells_kept_kernel_plans_give_the_unfrozen_cells_bits(monkeypatch):
    """The CPU kernels' plan per call structure (kernels/cpu/cells.py, _Plan), kept by a frozen
    cell: every structure, called twice, gives the bits of a cell that keeps nothing."""
    from gpukb.kernels.cpu import _common, cells as kernel_cells

    monkeypatch.setattr(kernel_cells, "MAX_PLANS", 5)
    rng = np.random.default_rng(6)
    frozen = lstm(rng)
    plain = gpukb.cells.lstm(frozen.kernel.copy(), frozen.recurrent_kernel.copy(), frozen.bias.copy())
    frozen.freeze()
    for B, T, options in [(2, 5, {}), (3, 5, {}), (2, 4, dict(go_backwards=True)),
                          (2, 5, dict(time_major=True, return_all_outputs=False)),
                          (2, 5, dict(mask=np.array([[1, 1, 0, 1, 1], [0, 1, 1, 1, 1]], bool),
                                      zero_output_for_mask=True)),
                          (3, 6, {}), (2, 5, {})]:
        for threads in (1, 2):
            monkeypatch.setattr(_common, "max_threads", lambda: threads)
            x, states = arguments(rng, B, T)
            if options.get("time_major"):
                x = np.ascontiguousarray(x.transpose(1, 0, 2))
            for _ in range(2):
                assert_same(gpukb.rnn(frozen, x, states, **options),
                            gpukb.rnn(plain, x, states, **options))
            assert 1 <= len(frozen._kernel_cache["plans"]) <= 5
    assert "plans" not in (getattr(plain, "_kernel_cache", None) or {})


@pytest.mark.parametrize("options", [
    {}, dict(go_backwards=True, return_all_outputs=False), dict(time_major=True),
    dict(mask="all valid first", zero_output_for_mask=True), dict(mask="holes")],
    ids=["plain", "backwards-last-only", "time-major", "mask-all-valid-first", "mask"])
@pytest.mark.parametrize("container", [list, tuple])
def test_a_frozen_cells_repeated_call_runs_its_kernel_plan_directly(monkeypatch, options,
                                                                    container):
    """A frozen cell's repeated fused call skips the RnnCall and the kernels' plan lookup
    (backends/cpu.py, _frozen_cell_runner): the kernels' run_cell is not called again, and every
    call gives an unfrozen cell's bits, whatever each call's mask; the states keep their
    container; a changed thread count plans again."""
    from gpukb.kernels import cpu as kernels
    from gpukb.kernels.cpu import _common, cells as kernel_cells

    rng = np.random.default_rng(8)
    frozen = lstm(rng)
    plain = gpukb.cells.lstm(frozen.kernel.copy(), frozen.recurrent_kernel.copy(),
                             frozen.bias.copy())
    frozen.freeze()
    options = dict(options)
    kind = options.pop("mask", None)
    runs = []
    run_cell = kernel_cells.run_cell
    counted = lambda *a, **k: runs.append(1) or run_cell(*a, **k)  # noqa: E731
    monkeypatch.setattr(kernels, "run_cell", counted)        # the backend's calls
    monkeypatch.setattr(kernel_cells, "run_cell", counted)   # a planned call planning again
    B, T = 3, 6
    for call in range(4):
        x, states = arguments(rng, B, T)
        states = container(states)
        if options.get("time_major"):
            x = np.ascontiguousarray(x.transpose(1, 0, 2))
        if kind is not None:
            mask = rng.random((B, T)) < 0.6
            if kind == "all valid first" and call == 0:
                mask[:] = True
            options["mask"] = mask
        if call == 3:   # another thread count: the kernels plan again
            monkeypatch.setattr(_common, "max_threads", lambda: 1 + _common.os.cpu_count())
        got = gpukb.rnn(frozen, x, states, **options)
        assert type(got[2]) is container
        assert_same(got, gpukb.rnn(plain, x, states, **options))
    # run_cell: every call of the plain cell, the frozen cell's first call and the last one
    assert len(runs) == 4 + 2
