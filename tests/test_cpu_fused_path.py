"""The cpu backend runs Keras cells on the fused kernels, with the generic loop's results."""

import numpy as np
import pytest
from hypothesis import given, strategies as st

import gpukb
from gpukb import _rnn
from gpukb._plan import recorded_plans


def weights(kind, D, H, dtype, rng, reset_after=True):
    gates = {"lstm": 4, "gru": 3, "simple_rnn": 1}[kind]
    W = (0.5 * rng.standard_normal((D, gates * H)) / np.sqrt(D)).astype(dtype)
    U = (0.5 * rng.standard_normal((H, gates * H)) / np.sqrt(H)).astype(dtype)
    b = (0.1 * rng.standard_normal((2, 3 * H) if kind == "gru" and reset_after else gates * H)).astype(dtype)
    return W, U, b


def make_cell(kind, W, U, b, reset_after=True):
    if kind == "gru":
        return gpukb.cells.gru(W, U, b, reset_after=reset_after)
    return getattr(gpukb.cells, kind)(W, U, b)


@pytest.fixture
def plans():
    """The plans gpukb.rnn logs for the calls of the test (gpukb._plan), in order."""
    with recorded_plans() as logged:
        yield logged


@given(kind=st.sampled_from(["lstm", "gru", "simple_rnn"]), dtype=st.sampled_from([np.float32, np.float64]),
       B=st.integers(1, 5), T=st.integers(1, 6), D=st.integers(1, 5), H=st.integers(1, 7),
       go_backwards=st.booleans(), zero_output=st.booleans(), return_all=st.booleans(),
       time_major=st.booleans(), reset_after=st.booleans(), masked=st.booleans(), seed=st.integers(0, 999))
def test_fused_equals_generic(kind, dtype, B, T, D, H, go_backwards, zero_output, return_all,
                              time_major, reset_after, masked, seed):
    rng = np.random.default_rng(seed)
    cell = make_cell(kind, *weights(kind, D, H, dtype, rng, reset_after), reset_after=reset_after)
    x = rng.standard_normal((T, B, D) if time_major else (B, T, D)).astype(dtype)
    states = [rng.standard_normal((B, H)).astype(dtype) for _ in cell.state_size]
    mask = None
    if masked:
        mask = rng.random((T, B) if time_major else (B, T)) < 0.6
    options = dict(go_backwards=go_backwards, mask=mask, time_major=time_major,
                   zero_output_for_mask=zero_output, return_all_outputs=return_all)
    fused = gpukb.rnn(cell, x, states, **options)
    generic = _rnn.run_generic(_rnn.prepare(cell, x, states, **options))
    tol = dict(rtol=2e-5, atol=2e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-13)
    for got, want in zip([fused[0], fused[1], *fused[2]], [generic[0], generic[1], *generic[2]]):
        assert got.shape == want.shape and got.dtype == want.dtype
        np.testing.assert_allclose(got, want, **tol)
    assert isinstance(fused[2], list)


def test_cells_take_the_fused_path(plans):
    rng = np.random.default_rng(0)
    for kind in ("lstm", "gru", "simple_rnn"):
        cell = make_cell(kind, *weights(kind, 3, 4, np.float32, rng))
        states = [np.zeros((2, 4), np.float32) for _ in cell.state_size]
        gpukb.rnn(cell, np.ones((2, 5, 3), np.float32), states)
        gpukb.rnn(cell, np.ones((2, 5, 3), np.float32), tuple(states), constants=[np.ones((2, 1))])
    assert [plan.path for plan in plans] == ["fused_cell"] * 6


def test_other_float_dtypes_are_cast_then_fused(plans):
    """float64 data through a float32 cell: cast once to float32 (as Keras does), then fused."""
    rng = np.random.default_rng(1)
    cell = make_cell("simple_rnn", *weights("simple_rnn", 3, 4, np.float32, rng))
    x, h = rng.standard_normal((2, 5, 3)), rng.standard_normal((2, 4))
    got = gpukb.rnn(cell, x, [h])
    want = gpukb.rnn(cell, x.astype(np.float32), [h.astype(np.float32)])
    assert [plan.path for plan in plans] == ["fused_cell"] * 2
    assert got[1].dtype == np.float32 and got[2][0].dtype == np.float32
    np.testing.assert_array_equal(got[1], want[1])


@pytest.mark.parametrize("case", ["float16", "nested_inputs", "rank4", "nested_states", "python_step"])
def test_other_calls_take_the_generic_path(plans, case):
    rng = np.random.default_rng(1)
    dtype = np.float16 if case == "float16" else np.float32
    W, U, b = weights("simple_rnn", 3, 4, dtype, rng)
    cell = gpukb.cells.simple_rnn(W, U, b)
    x = np.ones((2, 5, 3), dtype)
    h = np.zeros((2, 4), dtype)
    if case == "float16":
        gpukb.rnn(cell, x, [h])
    elif case == "nested_inputs":
        with pytest.raises(ValueError):
            gpukb.rnn(cell, [x], [h])
    elif case == "rank4":
        with pytest.raises(ValueError):
            gpukb.rnn(cell, x[..., None], [h])
    elif case == "nested_states":
        with pytest.raises((ValueError, TypeError)):
            gpukb.rnn(cell, x, [[h]])
    else:
        gpukb.rnn(lambda xt, s: (xt, s), x, [h])
    assert [plan.path for plan in plans] == ["generic"]
    why = {"float16": "float16", "nested_inputs": "nested", "rank4": "rank 4",
           "nested_states": "flat list", "python_step": "neither a gpukb.cells cell nor compiled by Numba"}[case]
    assert why in plans[0].reason, plans[0]


@pytest.mark.parametrize("kind, reset_after", [("lstm", True), ("gru", False)])
def test_frozen_cell_packs_once_with_the_same_results(kind, reset_after, monkeypatch):
    """Cell.freeze: the fused cpu calls pack the weights once per panel width (a batch of at
    most 3 rows takes wide panels) and give the unfrozen cell's results, bitwise (the packing
    is the same code for every kind; GRU without reset_after packs U in two parts)."""
    from gpukb.kernels.cpu import _common

    packs = []
    pack_weights = _common.pack_weights
    monkeypatch.setattr(_common, "pack_weights", lambda *a, **k: packs.append(1) or pack_weights(*a, **k))
    rng = np.random.default_rng(5)
    W, U, b = weights(kind, 6, 32, np.float32, rng, reset_after)
    plain = make_cell(kind, W, U, b, reset_after=reset_after)
    frozen = make_cell(kind, W, U, b, reset_after=reset_after).freeze()
    for B in (2, 8, 2):
        x = rng.standard_normal((B, 5, 6)).astype(np.float32)
        states = [rng.standard_normal((B, 32)).astype(np.float32) for _ in plain.state_size]
        want = gpukb.rnn(plain, x, states)
        got = gpukb.rnn(frozen, x, states)
        for g, w in zip([got[0], got[1], *got[2]], [want[0], want[1], *want[2]]):
            np.testing.assert_array_equal(g, w)
    assert len(packs) == 3 + 2   # the plain cell at every call; the frozen one once per width
    # The backward's transposed weights too: packed at the frozen cell's first pullback only,
    # every gradient bitwise the plain cell's, each time.
    from gpukb.kernels.cpu import backward

    transposes = []
    packed_transpose = backward._packed_transpose
    monkeypatch.setattr(backward, "_packed_transpose",
                        lambda *a: transposes.append(1) or packed_transpose(*a))
    dy = rng.standard_normal(want[1].shape).astype(np.float32)
    want_grads = gpukb.rnn_vjp(plain, x, states)[1](dy)
    per_call = len(transposes)
    assert per_call >= 2
    for _ in range(3):
        got_grads = gpukb.rnn_vjp(frozen, x, states)[1](dy)
        for name in ("kernel", "recurrent_kernel", "bias"):
            np.testing.assert_array_equal(got_grads.weights[name], want_grads.weights[name])
        np.testing.assert_array_equal(got_grads.inputs, want_grads.inputs)
    assert len(transposes) == 2 * per_call


@pytest.mark.parametrize("units", [32, 20])
@pytest.mark.parametrize("kind, reset_after", [("lstm", True), ("gru", True), ("gru", False),
                                                ("simple_rnn", True)])
def test_frozen_cell_calls_reuse_their_internal_buffers_and_start_fresh(kind, reset_after, units):
    """A frozen cell's plan keeps the buffers a call never returns (h, the input projection
    block, scratch, which samples have had a valid step) for its next call of the same
    structure (kernels/cpu/cells._internal): every call must start as a fresh one would, masked
    after unmasked and back, one thread or several at once. The projection block is not
    cleared between calls: with 20 units its panels are padded (and the recurrent kernel's
    wider than the input kernel's), and a call with inf and NaN inputs leaves its values there
    for the next."""
    import threading

    rng = np.random.default_rng(7)
    W, U, b = weights(kind, 6, units, np.float32, rng, reset_after)
    plain = make_cell(kind, W, U, b, reset_after=reset_after)
    frozen = make_cell(kind, W, U, b, reset_after=reset_after).freeze()
    calls = []
    for seed in range(6):
        r = np.random.default_rng(seed)
        x = r.standard_normal((3, 7, 6)).astype(np.float32)
        if seed == 2:
            x[1, 2, 0], x[2, 4, 3] = np.inf, np.nan
        states = [r.standard_normal((3, units)).astype(np.float32) for _ in plain.state_size]
        mask = r.random((3, 7)) < 0.6 if seed % 2 else None
        if mask is not None:
            mask[0, :3] = False   # a sample whose first steps are masked: seen starts False
        calls.append((x, states, dict(mask=mask, zero_output_for_mask=seed % 3 == 0)))
    want = [gpukb.rnn(plain, x, states, **options) for x, states, options in calls]

    def check(i):
        x, states, options = calls[i]
        got = gpukb.rnn(frozen, x, states, **options)
        for g, w in zip([got[0], got[1], *got[2]], [want[i][0], want[i][1], *want[i][2]]):
            np.testing.assert_array_equal(g, w)

    for i in [0, 1, 2, 3, 4, 5, 1, 0, 2, 0]:
        check(i)
    plans = frozen._kernel_cache["plans"]
    spares = [plan.spare for plan in plans.values()]
    assert spares and all(len(spare) == 1 for spare in spares)   # kept, one set a plan
    kept = [id(spare[0][0]) for spare in spares]
    check(0), check(1)
    assert [id(spare[0][0]) for spare in spares] == kept           # and used again
    errors = []

    def work(offset):
        try:
            for k in range(30):
                check((offset + k) % len(calls))
        except AssertionError as error:   # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]


def test_frozen_cell_weights_are_its_own_and_fixed():
    rng = np.random.default_rng(6)
    W, U, b = weights("lstm", 3, 4, np.float64, rng)
    cell = gpukb.cells.lstm(W, U, b)
    assert not cell.frozen and cell.freeze() is cell and cell.frozen and cell.freeze() is cell
    x = rng.standard_normal((2, 3, 3))
    before = gpukb.rnn(cell, x, [np.zeros((2, 4))] * 2)[0]
    W[...] = 0   # the caller's arrays were copied
    np.testing.assert_array_equal(gpukb.rnn(cell, x, [np.zeros((2, 4))] * 2)[0], before)
    with pytest.raises(ValueError, match="read-only"):
        cell.kernel[0, 0] = 1.0
    with pytest.raises(AttributeError, match="frozen cell"):
        cell.recurrent_kernel = U
