"""gpukb.kernels.cpu: fused LSTM / GRU / SimpleRNN kernels against a plain float64 NumPy reference.

The reference below is written from the Keras formulas and the spec's masking rules
(docs/semantics.md, "rnn"): one Python loop over time, states kept at masked
(sample, step), masked outputs zero (zero_output_for_mask) or the previous masked output, which
is zeros before the first processed step.
"""

import contextlib

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from gpukb.kernels.cells import GRU, GRU_BEFORE, LSTM, SIMPLE_RNN
from gpukb.kernels.cells.activations import NAMES as SUPPORTED_ACTIVATIONS
from gpukb.kernels.cells.activations import code as activation_code
from gpukb.kernels.cpu import _common, run_cell
from gpukb.kernels.cpu.activations import apply_activation
from gpukb.kernels.options import LoopOptions

from helpers import run_python

# ------------------------------------------------------------------------------------------
# The kernel entry, called per cell with keyword flags


def _flags(go_backwards=False, zero_output_for_mask=False, return_all_outputs=True,
           time_major=False):
    return LoopOptions(go_backwards, zero_output_for_mask, return_all_outputs, time_major)


def lstm(x, W, U, b, h0, c0, mask, activation="tanh", recurrent_activation="sigmoid", **flags):
    return run_cell(LSTM, x, W, U, b, [h0, c0], mask, _flags(**flags), activation,
                    recurrent_activation)


def gru(x, W, U, b, h0, mask, reset_after=True, activation="tanh",
        recurrent_activation="sigmoid", **flags):
    return run_cell(GRU if reset_after else GRU_BEFORE, x, W, U, b, [h0], mask, _flags(**flags),
                    activation, recurrent_activation)


def simple_rnn(x, W, U, b, h0, mask, activation="tanh", **flags):
    return run_cell(SIMPLE_RNN, x, W, U, b, [h0], mask, _flags(**flags), activation)


# ------------------------------------------------------------------------------------------
# float64 reference


def _act(name):
    return {
        "tanh": np.tanh,
        "sigmoid": lambda v: 1.0 / (1.0 + np.exp(-v)),
        "hard_sigmoid": lambda v: np.clip(0.2 * v + 0.5, 0.0, 1.0),
        "relu": lambda v: np.maximum(v, 0.0),
        "linear": lambda v: v,
        "hard_sigmoid_keras3": lambda v: np.clip(v + 3.0, 0.0, 6.0) / 6.0,
    }[name]


def lstm_cell(W, U, b, act, ract):
    H = U.shape[0]

    def step(xt, states):
        h, c = states
        z = xt @ W + h @ U + (0.0 if b is None else b)
        i, f = ract(z[:, :H]), ract(z[:, H:2 * H])
        g, o = act(z[:, 2 * H:3 * H]), ract(z[:, 3 * H:])
        c = f * c + i * g
        h = o * act(c)
        return h, [h, c]

    return step


def gru_cell(W, U, b, act, ract, reset_after):
    H = U.shape[0]

    def step(xt, states):
        (h,) = states
        if reset_after:
            bx, bh = (0.0, 0.0) if b is None else (b[0], b[1])
            xz = xt @ W + bx
            rec = h @ U + bh
            z = ract(xz[:, :H] + rec[:, :H])
            r = ract(xz[:, H:2 * H] + rec[:, H:2 * H])
            hh = act(xz[:, 2 * H:] + r * rec[:, 2 * H:])
        else:
            xz = xt @ W + (0.0 if b is None else b)
            z = ract(xz[:, :H] + h @ U[:, :H])
            r = ract(xz[:, H:2 * H] + h @ U[:, H:2 * H])
            hh = act(xz[:, 2 * H:] + (r * h) @ U[:, 2 * H:])
        h = z * h + (1.0 - z) * hh
        return h, [h]

    return step


def rnn_cell(W, U, b, act):
    def step(xt, states):
        (h,) = states
        h = act(xt @ W + (0.0 if b is None else b) + h @ U)
        return h, [h]

    return step


def reference(step, x, states, mask, *, go_backwards, zero_output_for_mask,
              return_all_outputs, time_major):
    x = np.asarray(x, np.float64)
    if time_major:
        x = x.transpose(1, 0, 2)
    B, T, _ = x.shape
    states = [np.array(s, np.float64) for s in states]
    prev = np.zeros_like(states[0])
    outs = []
    for t in (range(T - 1, -1, -1) if go_backwards else range(T)):
        out, new = step(x[:, t], states)
        if mask is not None:
            m = mask[t][:, None]
            new = [np.where(m, n, s) for n, s in zip(new, states)]
            out = np.where(m, out, 0.0 if zero_output_for_mask else prev)
        prev = out
        states = new
        outs.append(out)
    outputs = np.stack(outs, 1)
    if not return_all_outputs:
        outputs = outputs[:, -1:]
    if time_major:
        outputs = outputs.transpose(1, 0, 2)
    return outs[-1], outputs, states


# ------------------------------------------------------------------------------------------
# random problems


def _mask(kind, T, B, rng):
    if kind == "none":
        return None
    if kind == "random":
        m = rng.random((T, B)) < 0.6
    elif kind == "right_pad":   # valid steps first, padding after
        lengths = rng.integers(0, T + 1, B)
        m = np.arange(T)[:, None] < lengths[None, :]
    elif kind == "left_pad":
        lengths = rng.integers(0, T + 1, B)
        m = np.arange(T)[:, None] >= (T - lengths)[None, :]
    elif kind == "all_masked_rows":
        m = rng.random((T, B)) < 0.7
        m[:, rng.random(B) < 0.5] = False
    else:  # first processed step masked for everyone (forwards and backwards)
        m = rng.random((T, B)) < 0.7
        m[0] = False
        m[-1] = False
    return m


def _layout(a, how, rng):
    """The same values in another memory layout (non-contiguous views included)."""
    if how == "c":
        return a
    if how == "f":
        return np.asfortranarray(a)
    # a strided view into a bigger buffer
    big = np.zeros(tuple(2 * s for s in a.shape), a.dtype)
    view = big[tuple(slice(None, None, 2) for _ in a.shape)]
    view[...] = a
    return view


MASKS = ("none", "random", "right_pad", "left_pad", "all_masked_rows", "first_masked")


@st.composite
def problems(draw, cell):
    B = draw(st.integers(1, 9))
    T = draw(st.integers(1, 6))
    D = draw(st.integers(1, 7))
    H = draw(st.integers(1, 9))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    flags = dict(
        go_backwards=draw(st.booleans()),
        zero_output_for_mask=draw(st.booleans()),
        return_all_outputs=draw(st.booleans()),
        time_major=draw(st.booleans()),
    )
    acts = dict(activation=draw(st.sampled_from(SUPPORTED_ACTIVATIONS)))
    if cell != "simple_rnn":
        acts["recurrent_activation"] = draw(st.sampled_from(SUPPORTED_ACTIVATIONS))
    reset_after = draw(st.booleans()) if cell == "gru" else None
    use_bias = draw(st.booleans())
    mask_kind = draw(st.sampled_from(MASKS))
    layout = draw(st.sampled_from(["c", "f", "strided"]))
    seed = draw(st.integers(0, 2**31 - 1))
    return dict(B=B, T=T, D=D, H=H, dtype=dtype, flags=flags, acts=acts, reset_after=reset_after,
                use_bias=use_bias, mask_kind=mask_kind, layout=layout, seed=seed)


def _build(cell, p):
    rng = np.random.default_rng(p["seed"])
    B, T, D, H, dt = p["B"], p["T"], p["D"], p["H"], p["dtype"]
    G = {"lstm": 4, "gru": 3, "simple_rnn": 1}[cell] * H
    scale = 1.0 / np.sqrt(D + H)
    x = rng.standard_normal((T, B, D) if p["flags"]["time_major"] else (B, T, D))
    W = rng.standard_normal((D, G)) * scale
    U = rng.standard_normal((H, G)) * scale
    if not p["use_bias"]:
        b = None
    elif cell == "gru" and p["reset_after"]:
        b = rng.standard_normal((2, G)) * 0.3
    else:
        b = rng.standard_normal(G) * 0.3
    states = [rng.standard_normal((B, H)) * 0.5 for _ in range(2 if cell == "lstm" else 1)]
    mask = _mask(p["mask_kind"], T, B, rng)
    cast = [v.astype(dt) if v is not None else None for v in (x, W, U, b, *states)]
    lay = [_layout(v, p["layout"], rng) if v is not None else None for v in cast]
    return cast, lay, mask


def _run(cell, p):
    (x, W, U, b, *states), (lx, lW, lU, lb, *lstates), mask = _build(cell, p)
    a = {k: _act(v) for k, v in p["acts"].items()}
    ra = a.get("recurrent_activation")
    if cell == "lstm":
        step = lstm_cell(W.astype(np.float64), U.astype(np.float64),
                         None if b is None else b.astype(np.float64), a["activation"], ra)
        got = lstm(lx, lW, lU, lb, lstates[0], lstates[1], mask, **p["flags"], **p["acts"])
    elif cell == "gru":
        step = gru_cell(W.astype(np.float64), U.astype(np.float64),
                        None if b is None else b.astype(np.float64), a["activation"], ra,
                        p["reset_after"])
        got = gru(lx, lW, lU, lb, lstates[0], mask, reset_after=p["reset_after"],
                  **p["flags"], **p["acts"])
    else:
        step = rnn_cell(W.astype(np.float64), U.astype(np.float64),
                        None if b is None else b.astype(np.float64), a["activation"])
        got = simple_rnn(lx, lW, lU, lb, lstates[0], mask, **p["flags"], **p["acts"])
    want = reference(step, x, states, mask, **p["flags"])
    return got, want


def _check(got, want, dtype, B, H, T_out, time_major, nstates):
    last, outputs, states = got
    wlast, woutputs, wstates = want
    assert outputs.dtype == dtype and last.dtype == dtype
    assert outputs.shape == ((T_out, B, H) if time_major else (B, T_out, H))
    assert last.shape == (B, H)
    assert len(states) == nstates
    # Linear and relu activations leave an LSTM unbounded: its values can outgrow float32 (then
    # there is nothing to compare), and the rounding of the largest ones is what a small one
    # inherits through the recurrence, so the absolute tolerance scales with the largest value.
    largest = max(float(np.max(np.abs(a), initial=0.0)) for a in (woutputs, wlast, *wstates))
    if dtype == np.float32 and largest >= 1e30:
        assume(False)   # (only hypothesis's examples grow this large)
    scale = max(1.0, largest)
    tol = (dict(rtol=2e-4, atol=3e-5 * scale) if dtype == np.float32
           else dict(rtol=1e-10, atol=1e-11 * scale))
    np.testing.assert_allclose(outputs, woutputs, **tol)
    np.testing.assert_allclose(last, wlast, **tol)
    np.testing.assert_array_equal(last, outputs[-1] if time_major else outputs[:, -1])
    for s, w in zip(states, wstates):
        assert s.dtype == dtype and s.shape == (B, H)
        np.testing.assert_allclose(s, w, **tol)


CELL_SETTINGS = settings(max_examples=45, deadline=None,
                         suppress_health_check=[HealthCheck.too_slow])


@CELL_SETTINGS
@given(problems("lstm"))
def test_lstm_matches_reference(p):
    got, want = _run("lstm", p)
    T_out = p["T"] if p["flags"]["return_all_outputs"] else 1
    _check(got, want, p["dtype"], p["B"], p["H"], T_out, p["flags"]["time_major"], 2)


@CELL_SETTINGS
@given(problems("gru"))
def test_gru_matches_reference(p):
    got, want = _run("gru", p)
    T_out = p["T"] if p["flags"]["return_all_outputs"] else 1
    _check(got, want, p["dtype"], p["B"], p["H"], T_out, p["flags"]["time_major"], 1)


@CELL_SETTINGS
@given(problems("simple_rnn"))
def test_simple_rnn_matches_reference(p):
    got, want = _run("simple_rnn", p)
    T_out = p["T"] if p["flags"]["return_all_outputs"] else 1
    _check(got, want, p["dtype"], p["B"], p["H"], T_out, p["flags"]["time_major"], 1)


# ------------------------------------------------------------------------------------------
# fixed cases that the random ones may miss


@pytest.mark.parametrize("cell", ["lstm", "gru", "gru_before", "simple_rnn"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_batch_split_over_threads_matches_reference(cell, dtype, monkeypatch):
    """Force the multi-thread path (row chunks in a pool) on small sizes, any machine."""
    monkeypatch.setattr(_common, "_MIN_FLOPS_TO_SPLIT", 0.0)
    monkeypatch.setattr(_common, "max_threads", lambda: 2)
    assert len(_common.row_chunks(37, 1.0)) == 4   # more chunks than threads: handed out in turn
    name = "gru" if cell.startswith("gru") else cell
    p = dict(B=37, T=7, D=5, H=19, dtype=dtype,
             flags=dict(go_backwards=True, zero_output_for_mask=False, return_all_outputs=True,
                        time_major=False),
             acts=dict(activation="tanh") if cell == "simple_rnn"
             else dict(activation="tanh", recurrent_activation="sigmoid"),
             reset_after=(cell == "gru"), use_bias=True, mask_kind="random", layout="c",
             seed=7)
    got, want = _run(name, p)
    _check(got, want, dtype, 37, 19, 7, False, 2 if cell == "lstm" else 1)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_rows_do_not_depend_on_batch_or_threads(dtype, monkeypatch):
    """Bitwise: a sample's result is the same alone, inside a batch, and split over threads
    (every GEMM tile accumulates k in the same order)."""
    rng = np.random.default_rng(5)
    B, T, D, H = 15, 6, 11, 13
    x = rng.standard_normal((B, T, D)).astype(dtype)
    h0 = (rng.standard_normal((B, H)) * 0.5).astype(dtype)
    kw = dict(go_backwards=True, zero_output_for_mask=False, return_all_outputs=True,
              time_major=False, activation="tanh")
    cases = []
    for cell, g in (("lstm", 4), ("gru", 3), ("gru_before", 3), ("simple_rnn", 1)):
        W = (rng.standard_normal((D, g * H)) * 0.3).astype(dtype)
        U = (rng.standard_normal((H, g * H)) * 0.3).astype(dtype)
        if cell == "lstm":
            cases.append(lambda s, W=W, U=U: lstm(x[s], W, U, None, h0[s], h0[s], None, **kw,
                                                  recurrent_activation="sigmoid")[1])
        elif cell == "simple_rnn":
            cases.append(lambda s, W=W, U=U: simple_rnn(x[s], W, U, None, h0[s], None, **kw)[1])
        else:
            cases.append(lambda s, W=W, U=U, ra=(cell == "gru"): gru(
                x[s], W, U, None, h0[s], None, reset_after=ra, **kw,
                recurrent_activation="sigmoid")[1])
    full = [f(slice(None)) for f in cases]
    for f, want in zip(cases, full):
        for n in (0, 4, 7, 14):
            np.testing.assert_array_equal(f(slice(n, n + 1))[0], want[n])
        np.testing.assert_array_equal(f(slice(5, 8)), want[5:8])
    monkeypatch.setattr(_common, "_MIN_FLOPS_TO_SPLIT", 0.0)
    monkeypatch.setattr(_common, "_MIN_ROWS", 3)
    monkeypatch.setattr(_common, "max_threads", lambda: 2)
    for f, want in zip(cases, full):
        np.testing.assert_array_equal(f(slice(None)), want)


def test_concurrent_calls_from_python_threads(monkeypatch):
    """Callers in several threads share the row-chunk pool; results must not mix."""
    from concurrent.futures import ThreadPoolExecutor

    monkeypatch.setattr(_common, "_MIN_FLOPS_TO_SPLIT", 0.0)
    monkeypatch.setattr(_common, "max_threads", lambda: 2)
    rng = np.random.default_rng(3)
    B, T, D, H = 20, 9, 4, 7
    W = rng.standard_normal((D, 4 * H)) * 0.3
    U = rng.standard_normal((H, 4 * H)) * 0.3
    z = np.zeros((B, H))
    xs = [rng.standard_normal((B, T, D)) for _ in range(6)]
    kw = dict(go_backwards=False, zero_output_for_mask=False, return_all_outputs=True,
              time_major=False, activation="tanh", recurrent_activation="sigmoid")
    want = [lstm(x, W, U, None, z, z, None, **kw)[1] for x in xs]
    with ThreadPoolExecutor(3) as ex:
        got = list(ex.map(lambda x: lstm(x, W, U, None, z, z, None, **kw)[1], xs * 3))
    for i, g in enumerate(got):
        np.testing.assert_array_equal(g, want[i % len(xs)])


@pytest.mark.parametrize("go_backwards", [False, True])
@pytest.mark.parametrize("B", [1, 11])
def test_input_projection_in_time_blocks(B, go_backwards, monkeypatch):
    """The input projection is computed a few steps ahead: blocks of 2 to 5 steps, T = 7."""
    T, H = 7, 5
    # float64 rows padded to 16 or 32 columns: 2 steps of 32 or 5 steps of 16 per block
    monkeypatch.setattr(_common, "_XP_BLOCK_BYTES", 3 * B * 32 * 8 - 1)
    for cell, ns, ra in (("lstm", 2, None), ("gru", 1, True), ("gru", 1, False), ("simple_rnn", 1, None)):
        p = dict(B=B, T=T, D=3, H=H, dtype=np.float64,
                 flags=dict(go_backwards=go_backwards, zero_output_for_mask=False,
                            return_all_outputs=True, time_major=(B == 1)),
                 acts=dict(activation="tanh") if cell == "simple_rnn"
                 else dict(activation="tanh", recurrent_activation="sigmoid"),
                 reset_after=ra, use_bias=True, mask_kind="random", layout="c", seed=B)
        got, want = _run(cell, p)
        _check(got, want, np.float64, B, H, T, B == 1, ns)


@contextlib.contextmanager
def _recorded_time_blocks(block_seconds=None):
    """Record the time block (s0, s1) of every compiled kernel call; block_seconds=0.0 makes
    every block a single step."""
    blocks = []
    saved = (_common._BLOCK_SECONDS, _common.run_chunks)

    def spy(fn, args, chunks, *rest):
        def fn_spy(*a):
            blocks.append(a[-2:])
            return fn(*a)
        return saved[1](fn_spy, args, chunks, *rest)

    _common.run_chunks = spy
    if block_seconds is not None:
        _common._BLOCK_SECONDS = block_seconds
    try:
        yield blocks
    finally:
        _common._BLOCK_SECONDS, _common.run_chunks = saved


@CELL_SETTINGS
@given(st.sampled_from(["lstm", "gru", "simple_rnn"]).flatmap(lambda c: st.tuples(st.just(c), problems(c))))
def test_results_do_not_depend_on_time_blocks(cell_p):
    """Bitwise: one compiled call per step (Ctrl-C lands between calls) or one for all steps."""
    cell, p = cell_p
    whole, want = _run(cell, p)
    with _recorded_time_blocks(0.0) as blocks:
        stepwise, _ = _run(cell, p)
    assert sorted(set(blocks)) == [(s, s + 1) for s in range(p["T"])]
    for got, ref in zip([stepwise[0], stepwise[1], *stepwise[2]], [whole[0], whole[1], *whole[2]]):
        np.testing.assert_array_equal(got, ref)
    T_out = p["T"] if p["flags"]["return_all_outputs"] else 1
    _check(stepwise, want, p["dtype"], p["B"], p["H"], T_out, p["flags"]["time_major"],
           2 if cell == "lstm" else 1)


@pytest.mark.parametrize("cell", ["lstm", "gru", "gru_before", "simple_rnn"])
def test_time_blocks_across_threads_and_projection_blocks(cell, monkeypatch):
    """Row chunks over threads, input projection in blocks of 3 steps, time blocks of 1 step:
    the same bits as one call per chunk."""
    monkeypatch.setattr(_common, "_MIN_FLOPS_TO_SPLIT", 0.0)
    monkeypatch.setattr(_common, "max_threads", lambda: 2)   # 4 chunks: 2 a thread
    monkeypatch.setattr(_common, "_XP_BLOCK_BYTES", 3 * 10 * 80 * 8)
    name = "gru" if cell.startswith("gru") else cell
    p = dict(B=37, T=11, D=5, H=19, dtype=np.float64,
             flags=dict(go_backwards=True, zero_output_for_mask=True, return_all_outputs=True,
                        time_major=False),
             acts=dict(activation="tanh") if cell == "simple_rnn"
             else dict(activation="tanh", recurrent_activation="hard_sigmoid"),
             reset_after=(cell == "gru"), use_bias=True, mask_kind="random", layout="c", seed=11)
    whole, want = _run(name, p)
    with _recorded_time_blocks(0.0) as blocks:
        stepwise, _ = _run(name, p)
    assert len(blocks) == 4 * 11   # 4 row chunks, 11 steps each
    for got, ref in zip([stepwise[1], *stepwise[2]], [whole[1], *whole[2]]):
        np.testing.assert_array_equal(got, ref)
    _check(stepwise, want, np.float64, 37, 19, 11, False, 2 if cell == "lstm" else 1)


def test_long_sequences_return_to_python_between_time_blocks(monkeypatch):
    """A call estimated to take longer than _BLOCK_SECONDS runs as several compiled calls, each
    sized from the previous one's measured time; a short call stays one compiled call."""
    rng = np.random.default_rng(2)
    B, T, D, H = 2, 400, 3, 8
    x = rng.standard_normal((B, T, D))
    W, U = rng.standard_normal((D, H)) * 0.3, rng.standard_normal((H, H)) * 0.3
    kw = dict(go_backwards=False, zero_output_for_mask=False, return_all_outputs=True,
              time_major=False, activation="tanh")
    with _recorded_time_blocks() as calls:
        want = simple_rnn(x, W, U, None, np.zeros((B, H)), None, **kw)[1]
    assert calls == [(0, T)]
    # estimated at 50 ms per step: a first block of 10 steps, which takes far less than 0.5 s,
    # so the next ones grow (at most 4x each)
    monkeypatch.setattr(_common, "_STEP_SECONDS", 0.05)
    monkeypatch.setattr(_common, "_ROW_STEP_SECONDS", 0.0)
    monkeypatch.setattr(_common, "_FLOPS_PER_SECOND", np.inf)
    with _recorded_time_blocks(0.5) as calls:
        got = simple_rnn(x, W, U, None, np.zeros((B, H)), None, **kw)[1]
    np.testing.assert_array_equal(got, want)
    assert calls[0] == (0, 10) and calls[1][1] - calls[1][0] > 10 and len(calls) >= 3
    assert [c[0] for c in calls[1:]] == [c[1] for c in calls[:-1]] and calls[-1][1] == T


def test_interrupted_call_stops_every_thread(monkeypatch):
    """KeyboardInterrupt in the calling thread between two blocks: the pool threads finish their
    current block and take no other; nothing runs once it propagates; the next call is exact."""
    import threading
    import time

    monkeypatch.setattr(_common, "_MIN_FLOPS_TO_SPLIT", 0.0)
    monkeypatch.setattr(_common, "max_threads", lambda: 3)
    monkeypatch.setattr(_common, "_BLOCK_SECONDS", 0.0)   # one step per compiled call
    rng = np.random.default_rng(4)
    B, T, D, H = 40, 30, 3, 8
    x = rng.standard_normal((B, T, D))
    W, U = rng.standard_normal((D, 4 * H)) * 0.3, rng.standard_normal((H, 4 * H)) * 0.3
    z = np.zeros((B, H))
    kw = dict(go_backwards=False, zero_output_for_mask=False, return_all_outputs=True,
              time_major=False, activation="tanh", recurrent_activation="sigmoid")
    want = lstm(x, W, U, None, z, z, None, **kw)
    main = threading.get_ident()
    running, done, at_interrupt = [], [], []
    saved = _common.run_chunks

    def spy(fn, args, chunks, *rest):
        def fn_spy(*a):
            if threading.get_ident() == main and len(done) >= 3:
                at_interrupt.append(len(done))
                raise KeyboardInterrupt   # as a signal handler would, between two blocks
            running.append(1)
            time.sleep(0.002)             # let the pool threads run blocks meanwhile
            fn(*a)
            running.pop()
            done.append(threading.get_ident())
        return saved(fn_spy, args, chunks, *rest)

    monkeypatch.setattr(_common, "run_chunks", spy)
    with pytest.raises(KeyboardInterrupt):
        lstm(x, W, U, None, z, z, None, **kw)
    assert not running                       # every pool thread had stopped,
    assert len(done) <= at_interrupt[0] + 2  # each after the block it was running
    n = len(done)
    time.sleep(0.05)
    assert len(done) == n                    # and none started later
    monkeypatch.setattr(_common, "run_chunks", saved)
    got = lstm(x, W, U, None, z, z, None, **kw)
    for g, w in zip([got[1], *got[2]], [want[1], *want[2]]):
        np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sizes_across_tile_edges(dtype):
    """B and H around the micro-kernel's row tiles (6/4/2/1) and column panels (16/8)."""
    for B, H in [(6, 16), (7, 17), (12, 8), (13, 33), (4, 4)]:
        p = dict(B=B, T=3, D=9, H=H, dtype=dtype,
                 flags=dict(go_backwards=False, zero_output_for_mask=True,
                            return_all_outputs=True, time_major=True),
                 acts=dict(activation="tanh", recurrent_activation="hard_sigmoid"),
                 reset_after=False, use_bias=True, mask_kind="left_pad", layout="strided",
                 seed=B * 100 + H)
        for cell, ns in (("lstm", 2), ("gru", 1)):
            got, want = _run(cell, p)
            _check(got, want, dtype, B, H, 3, True, ns)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_pack_in_row_blocks_is_the_panels(dtype, monkeypatch):
    """pack copies a few rows at a time (blocks of 8 here, with a ragged last block and a
    zero-padded last panel); panel p row k must be u[k, c0 + p*NR : c0 + (p+1)*NR]."""
    from gpukb.kernels.cpu import _gemm

    monkeypatch.setattr(_gemm, "_PACK_BLOCK_BYTES", 1)   # the smallest block: 8 rows
    u = np.random.default_rng(0).standard_normal((21, 75)).astype(dtype)
    for c0, ncols, NR in ((0, 75, 16), (3, 64, 16), (5, 40, 32)):
        P = _gemm.pack(u, c0, ncols, NR)
        npan = -(-ncols // NR)
        want = np.zeros((21, npan * NR), dtype)
        want[:, :ncols] = u[:, c0:c0 + ncols]
        assert P.shape == (npan, 21, NR)
        np.testing.assert_array_equal(P, want.reshape(21, npan, NR).transpose(1, 0, 2))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_summed_products_match_float64(dtype):
    """The backward's weight-gradient sums (A.T @ U over many rows): every tile height (M = 1..13
    takes 8/6/4/2/1-row tiles), k-chunks with a ragged last one, a column range that starts past
    0 and ends off the vector blocks, rows read with strides wider than the operands."""
    from gpukb.kernels.cpu._gemm_sums import block_columns, summed_products

    rng = np.random.default_rng(3)
    NR = block_columns(dtype)
    K, N = 300, 2 * NR + 5
    for M in (1, 3, 6, 8, 13):
        a = rng.standard_normal((K, M + 2)).astype(dtype)     # rows M + 2 apart
        u = rng.standard_normal((K, N + 3)).astype(dtype)     # rows N + 3 apart
        z = np.full((M, N), np.nan, dtype)
        c0, c1 = NR, N
        summed_products(z, a.reshape(-1), M + 2, a.reshape(-1), M + 2, M, u.reshape(-1), N + 3,
                        K, c0, c1)
        want = a[:, :M].astype(np.float64).T @ u[:, c0:c1].astype(np.float64)
        np.testing.assert_allclose(z[:, c0:c1], want, rtol=0, atol=K * 4 * np.finfo(dtype).eps * 8)
        assert np.isnan(z[:, :c0]).all()                      # other columns untouched
        # A's columns from two arrays (x and h side by side): M rows of Z from a, 7 from a2,
        # the same bits as each part alone (every element sums the same products in order)
        a2 = rng.standard_normal((K, 9)).astype(dtype)        # rows 9 apart, 7 used
        both = np.full((M + 7, N), np.nan, dtype)
        summed_products(both, a.reshape(-1), M + 2, a2.reshape(-1), 9, M, u.reshape(-1), N + 3,
                        K, c0, c1)
        np.testing.assert_array_equal(both[:M, c0:c1], z[:, c0:c1])
        alone = np.full((7, N), np.nan, dtype)
        summed_products(alone, a2.reshape(-1), 9, a2.reshape(-1), 9, 7, u.reshape(-1), N + 3,
                        K, c0, c1)
        np.testing.assert_array_equal(both[M:, c0:c1], alone[:, c0:c1])
        want2 = a2[:, :7].astype(np.float64).T @ u[:, c0:c1].astype(np.float64)
        np.testing.assert_allclose(alone[:, c0:c1], want2, rtol=0,
                                   atol=K * 4 * np.finfo(dtype).eps * 8)


def test_masked_output_before_first_valid_step_is_zero_not_h0():
    B, T, D, H = 2, 3, 2, 3
    rng = np.random.default_rng(0)
    x = rng.standard_normal((B, T, D))
    W, U = rng.standard_normal((D, H)), rng.standard_normal((H, H))
    h0 = np.full((B, H), 0.75)
    mask = np.array([[False, True], [True, True], [True, False]])  # (T, B)
    last, out, (h,) = simple_rnn(x, W, U, None, h0, mask, go_backwards=False,
                                 zero_output_for_mask=False, return_all_outputs=True,
                                 time_major=False, activation="tanh")
    np.testing.assert_array_equal(out[0, 0], 0.0)           # sample 0, step 0 masked: zeros
    np.testing.assert_array_equal(out[1, 2], out[1, 1])     # sample 1, step 2 masked: repeat
    h01 = np.tanh(x[0, 0] * 0 @ W + x[0, 1] @ W + h0[0] @ U)  # sample 0 starts from h0 at t=1
    np.testing.assert_allclose(out[0, 1], h01, rtol=1e-12)


def test_nan_in_one_sample_stays_in_that_sample():
    rng = np.random.default_rng(1)
    B, T, D, H = 5, 4, 3, 6
    x = rng.standard_normal((B, T, D)).astype(np.float32)
    x[2, 1, 0] = np.nan
    x[3, 0, 1] = np.inf
    W = rng.standard_normal((D, 4 * H)).astype(np.float32)
    U = rng.standard_normal((H, 4 * H)).astype(np.float32)
    z = np.zeros((B, H), np.float32)
    _, out, (h, c) = lstm(x, W, U, None, z, z, None, go_backwards=False,
                          zero_output_for_mask=False, return_all_outputs=True, time_major=False,
                          activation="tanh", recurrent_activation="sigmoid")
    assert np.isnan(out[2, 1:]).all() and np.isfinite(out[2, 0]).all()
    good = [0, 1, 4]
    assert np.isfinite(out[good]).all() and np.isfinite(h[good]).all()
    assert np.all(np.abs(out[good]) <= 1.0)


def test_dtype_mismatch_is_rejected():
    x = np.zeros((2, 3, 4), np.float32)
    with pytest.raises(AssertionError):
        simple_rnn(x, np.zeros((4, 5)), np.zeros((5, 5), np.float32), None,
                   np.zeros((2, 5), np.float32), None, go_backwards=False,
                   zero_output_for_mask=False, return_all_outputs=True, time_major=False,
                   activation="tanh")


def test_unknown_activation_is_rejected():
    with pytest.raises(ValueError, match="swish"):
        activation_code("swish")


def test_import_compiles_nothing(tmp_path):
    code = (
        "import sys\n"
        "import gpukb.kernels.cpu as K\n"
        "mods = [sys.modules['gpukb.kernels.cpu.' + m] for m in "
        "('cells', 'lstm', 'gru', 'simple_rnn', 'activations', '_gemm')]\n"
        "from numba.core.registry import CPUDispatcher\n"
        "n = [(m.__name__, k) for m in mods for k, v in vars(m).items()\n"
        "     if isinstance(v, CPUDispatcher) and v.signatures]\n"
        "print('COMPILED', n)\n"
    )
    res = run_python(code, home=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "COMPILED []" in res.stdout, res.stdout


# ------------------------------------------------------------------------------------------
# activations


def _wide_grid(dtype):
    g = np.concatenate([
        np.linspace(-30, 30, 20001),
        np.geomspace(1e-30, 1e4, 3000), -np.geomspace(1e-30, 1e4, 3000),
        [0.0, -0.0, 87.5, -87.5, 88.9, -88.9, 709.5, -709.5, 1e30, -1e30, np.inf, -np.inf],
    ])
    return g.astype(dtype)


def _ulp_error(got, want, dtype):
    want_r = want.astype(dtype)
    ulp = np.spacing(np.abs(want_r)).astype(np.float64)
    tiny = 1e-37 if dtype == np.float32 else 1e-300   # sigmoid far in the negative tail
    same = got.astype(np.float64) == want             # +-inf included
    with np.errstate(invalid="ignore"):
        err = np.abs(got.astype(np.float64) - want)
    return np.where(same | (err <= tiny), 0.0, err / ulp)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", SUPPORTED_ACTIVATIONS)
def test_activation_accuracy(name, dtype):
    x = _wide_grid(dtype)
    with np.errstate(over="ignore"):
        want = _act(name)(x.astype(np.longdouble)).astype(np.float64)
    got = apply_activation(name, x)
    assert got.dtype == dtype
    if name.startswith("hard_sigmoid"):  # 0.2 x + 0.5 or x + 3 cancels: absolute error
        err = np.abs(got - want) / np.finfo(dtype).eps
        limit = 1.0
    else:
        err = _ulp_error(got, want, dtype)
        limit = 4.0 if name in ("tanh", "sigmoid") else 0.5
    assert err.max() <= limit, (name, x[np.argmax(err)], got[np.argmax(err)], err.max())
    if name in ("tanh", "sigmoid"):
        assert np.all(np.abs(got) <= 1.0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_activations_propagate_nan_and_saturate(dtype):
    special = np.array([np.nan, np.inf, -np.inf], dtype)
    for name in SUPPORTED_ACTIVATIONS:
        y = apply_activation(name, special)
        assert np.isnan(y[0]), name
    np.testing.assert_array_equal(apply_activation("tanh", special)[1:], [1.0, -1.0])
    s = apply_activation("sigmoid", special)
    assert s[1] == 1.0 and 0.0 <= s[2] < 1e-37
    np.testing.assert_array_equal(apply_activation("hard_sigmoid", special)[1:], [1.0, 0.0])
    np.testing.assert_array_equal(apply_activation("relu", special)[1:], [np.inf, 0.0])
    np.testing.assert_array_equal(apply_activation("hard_sigmoid_keras3", special)[1:], [1.0, 0.0])


@given(st.lists(st.floats(-50, 50, allow_nan=False, width=32), min_size=1, max_size=40),
       st.sampled_from(SUPPORTED_ACTIVATIONS))
@example([-2.4375], "hard_sigmoid")   # 0.2 x + 0.5 = 0.0125: 5.8e-7 relative, 7e-9 absolute
@settings(max_examples=40, deadline=None)
def test_activation_matches_numpy_elementwise(values, name):
    x = np.array(values, np.float32)
    want = _act(name)(x.astype(np.float64))
    got = apply_activation(name, x)
    if name.startswith("hard_sigmoid"):   # 0.2 x + 0.5 or x + 3 cancels: absolute error, as in
        np.testing.assert_allclose(got, want, rtol=0, atol=np.finfo(np.float32).eps)   # accuracy
    else:
        np.testing.assert_allclose(got, want, rtol=4e-7, atol=1e-30)
