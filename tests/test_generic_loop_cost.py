"""The generic loop checks a step's results in full once (the first step) and later steps with a
quick comparison against it (issue 12 item 5): these tests hold that structure, and that the quick
path changes nothing: bitwise the results of a plain loop written from docs/semantics.md, the
full checks' errors, and no array of the caller's or the step's is written to."""

from __future__ import annotations

import collections

import numpy as np
import optree
import pytest

from gpukb._rnn import loop, prepare, run_generic

B, T, D, H = 3, 6, 2, 4
RNG = np.random.default_rng(12)
X = RNG.standard_normal((B, T, D))
W = RNG.standard_normal((D, H))
U = RNG.standard_normal((H, H)) * 0.5
MASK = RNG.random((B, T)) < 0.6
MASK[:, 0] = [True, False, True]


def tanh_step(x, states):
    h = np.tanh(x @ W + states[0] @ U)
    return h, [h]


def two_state_step(x, states):
    h, c = states[0], states[1]
    c2 = np.tanh(x @ W + h @ U) + 0.5 * c
    return c2 * 2.0, (np.tanh(c2), c2)


def nested_output_step(x, states):
    h = np.tanh(x @ W + states[0] @ U)
    return {"h": h, "pair": (h * 2.0, h[:, :1] - 1.0)}, [h]


def plain_loop(step, x, states, mask=None, go_backwards=False, zero_output_for_mask=False,
               return_all_outputs=True):
    """rnn's semantics written as directly as possible (batch-major, flat states)."""
    states, outputs, prev = list(states), [], None
    for i in range(T):
        t = T - 1 - i if go_backwards else i
        out, new = step(x[:, t], tuple(states))
        new = list(new) if isinstance(new, (list, tuple)) else [new]
        leaves, spec = optree.tree_flatten(out)
        if mask is not None:
            if prev is None:
                prev = [np.zeros_like(leaf) for leaf in leaves]
            keep = [mask[:, t].reshape((B,) + (1,) * (leaf.ndim - 1)) for leaf in leaves]
            fallback = [np.zeros_like(p) for p in prev] if zero_output_for_mask else prev
            leaves = [np.where(k, leaf, f) for k, leaf, f in zip(keep, leaves, fallback)]
            prev = leaves
            new = [np.where(mask[:, t].reshape((B,) + (1,) * (n.ndim - 1)), n, s) for n, s in zip(new, states)]
        outputs.append(leaves)
        states = new
    if not return_all_outputs:
        outputs = outputs[-1:]
    stacked = [np.stack([o[k] for o in outputs], axis=1) for k in range(len(outputs[0]))]
    return optree.tree_unflatten(spec, stacked), states


def assert_bitwise(got, want):
    got_leaves, got_spec = optree.tree_flatten(got)
    want_leaves, want_spec = optree.tree_flatten(want)
    assert got_spec == want_spec
    for g, w in zip(got_leaves, want_leaves):
        assert g.dtype == w.dtype and g.shape == w.shape
        np.testing.assert_array_equal(g, w)  # NaN-free data: equality is bitwise here


STEPS = {
    "one_state": (tanh_step, lambda: [np.zeros((B, H))]),
    "two_states": (two_state_step, lambda: (np.zeros((B, H)), np.ones((B, H)))),
    "nested_output": (nested_output_step, lambda: [np.zeros((B, H))]),
}


@pytest.mark.parametrize("name", sorted(STEPS))
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("flags", [
    {}, {"go_backwards": True}, {"zero_output_for_mask": True}, {"return_all_outputs": False},
])
def test_quick_path_matches_a_plain_loop_bitwise(name, masked, flags):
    step, initial = STEPS[name]
    mask = MASK if masked else None
    last, outputs, states = run_generic(prepare(step, X, initial(), mask=mask, **flags))
    want_outputs, want_states = plain_loop(step, X, initial(), mask=mask, **flags)
    assert_bitwise(outputs, want_outputs)
    assert_bitwise(list(states), want_states)
    assert_bitwise(last, optree.tree_map(lambda a: a[:, -1], want_outputs))


@pytest.mark.parametrize("name", sorted(STEPS))
@pytest.mark.parametrize("masked", [False, True])
def test_full_checks_run_only_at_the_first_step(name, masked, monkeypatch):
    """Flat states and an unchanging output: the full checks (optree paths, names) run once."""
    calls = collections.Counter()

    def counted(function):
        def wrapper(*args, **kwargs):
            calls[function.__name__] += 1
            return function(*args, **kwargs)
        return wrapper

    step, initial = STEPS[name]
    call = prepare(step, X, initial(), mask=MASK if masked else None)
    for function in (loop.check_step_output, loop.check_new_states):
        monkeypatch.setattr(loop, function.__name__, counted(function))
    monkeypatch.setattr(optree, "tree_flatten_with_path", counted(optree.tree_flatten_with_path))
    run_generic(call)
    assert calls == {"check_step_output": 1, "check_new_states": 1, "tree_flatten_with_path": 1}


class Sub(np.ndarray):
    """An ndarray subclass: another leaf type than the first step's, same shape and dtype."""


@pytest.mark.parametrize("mask", [MASK, None], ids=["masked", "unmasked"])
@pytest.mark.parametrize("go_backwards", [False, True])
def test_results_that_differ_from_the_first_step_take_the_full_checks(mask, go_backwards):
    """Lists, tuples, bare arrays, namedtuples and another array type for the states, and an
    output of another type, at later steps: all valid, all give the plain loop's results
    (unmasked: the one-array loop's quick path, and its fallback to the full checks)."""
    Pair = collections.namedtuple("Pair", "h")
    count = [0]

    def changing(x, states):
        count[0] += 1
        h = np.tanh(x @ W + states[0] @ U)
        shapes = [[h], (h,), h, Pair(h), [h.view(Sub)], h.view(Sub), [h * 1.0]]
        return (h.view(Sub) if count[0] % 2 else h), shapes[count[0] % len(shapes)]

    _, outputs, states = run_generic(prepare(changing, X, [np.zeros((B, H))], mask=mask,
                                             go_backwards=go_backwards))
    want_outputs, want_states = plain_loop(tanh_step, X, [np.zeros((B, H))], mask=mask,
                                           go_backwards=go_backwards)
    np.testing.assert_array_equal(outputs, want_outputs)
    np.testing.assert_array_equal(states[0], want_states[0])


def test_a_step_that_reuses_its_state_list():
    """The loop copies a returned list of states: a step that refills one list object each step
    does not change what the loop holds."""
    held = [None, None]

    def reusing(x, states):
        h, c = states
        held[0], held[1] = np.tanh(x @ W + h @ U), c + 1.0
        return held[0], held

    def fresh(x, states):
        h, c = states
        return np.tanh(x @ W + h @ U), [np.tanh(x @ W + h @ U), c + 1.0]

    initial = (np.zeros((B, H)), np.zeros((B, H)))
    got = run_generic(prepare(reusing, X, initial, mask=MASK))
    want = run_generic(prepare(fresh, X, initial, mask=MASK))
    for g, w in zip(optree.tree_leaves(got), optree.tree_leaves(want)):
        np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("zero_output_for_mask", [False, True])
def test_masking_writes_to_no_array_of_the_caller_or_the_step(zero_output_for_mask):
    seen = []  # (array, a copy taken when the loop handed it over or received it)

    def recording(x, states):
        seen.extend((s, s.copy()) for s in states)
        h = np.tanh(x @ W + states[0] @ U)
        out = h * 1.0
        seen.extend([(h, h.copy()), (out, out.copy())])
        return out, [h]

    h0 = RNG.standard_normal((B, H))
    seen.append((h0, h0.copy()))
    run_generic(prepare(recording, X, [h0], mask=MASK, zero_output_for_mask=zero_output_for_mask))
    assert len(seen) == 1 + 3 * T
    for array, copy in seen:
        np.testing.assert_array_equal(array, copy)


@pytest.mark.parametrize("later", [
    lambda h: ("not an array", [h]),
    lambda h: (h[:, :2], [h]),
    lambda h: (h.astype(np.float32), [h]),
    lambda h: (h, [h, h]),
    lambda h: (h, [h[:, :2]]),
    lambda h: (h, [h.astype(np.float32)]),
    lambda h: (h, [[h]]),
    lambda h: [h],
])
def test_a_bad_later_step_raises_the_full_checks_error(later):
    """The quick path hands anything unusual to the full checks: the error at step 4 is the one
    they raise, given the same (first, later) pair directly."""
    calls = [0]

    def step(x, states):
        calls[0] += 1
        h = np.tanh(x @ W + states[0] @ U)
        return (h, [h]) if calls[0] < 4 else later(h)

    with pytest.raises((ValueError, TypeError)) as raised:
        run_generic(prepare(step, X, [np.zeros((B, H))]))
    assert calls[0] == 4

    call = prepare(step, X, [np.zeros((B, H))])
    h = np.zeros((B, H))
    with pytest.raises(type(raised.value)) as direct:
        result = later(h)
        if not (isinstance(result, (list, tuple)) and len(result) == 2):
            loop._raise_not_a_pair(result)
        first = loop.check_step_output(call, h, None)
        loop.check_step_output(call, result[0], first)
        loop.check_new_states(call, result[1], set())
    assert str(raised.value) == str(direct.value)


def test_gpukb_bench_generic_runs_the_generic_loop_benchmark(monkeypatch):
    """``gpukb bench --generic`` is ``python -m gpukb.bench.generic`` (its rounds passed on)."""
    from gpukb import cli
    from gpukb.bench import generic

    calls = []
    monkeypatch.setattr(generic, "main", lambda argv=None: calls.append(argv) or 0)
    assert cli.main(["bench", "--generic", "--rounds", "2"]) == 0
    assert cli.main(["bench", "--generic"]) == 0
    assert calls == [["--rounds", "2"], ["--rounds", "3"]]


@pytest.mark.parametrize("argv,message", [
    (["--sizes", "2x3x4x5"], "--sizes does not apply with --generic"),
    (["--json", "out.json"], "--json does not apply with --generic"),
    (["--grid"], "--grid does not apply with --generic"),
    (["--rounds", "0"], "--rounds must be at least 1"),
    (["--backends", "cpu,jit"], "--backends"),
])
def test_gpukb_bench_generic_refuses_what_does_not_apply(argv, message, monkeypatch, capsys):
    from gpukb import cli
    from gpukb.bench import generic

    monkeypatch.setattr(generic, "main", lambda argv=None: pytest.fail("ran despite a bad option"))
    with pytest.raises(SystemExit) as exit_:
        cli.main(["bench", "--generic", *argv])
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_gpukb_bench_generic_passes_one_backend_on(monkeypatch):
    from gpukb import cli
    from gpukb.bench import generic

    calls = []
    monkeypatch.setattr(generic, "main", lambda argv=None: calls.append(argv) or 0)
    assert cli.main(["bench", "--generic", "--backends", "cpu"]) == 0
    assert calls == [["--rounds", "3", "--backend", "cpu"]]


def test_gpukb_bench_generic_refuses_a_backend_it_cannot_time(monkeypatch, capsys):
    """A backend that takes arrays other than NumPy, torch or CuPy (the dask plugin takes dask
    arrays and hands each call over), or one not available here, is refused before anything
    runs, naming why (it used to run and end in a worker's traceback)."""
    import gpukb
    from gpukb.bench import generic

    monkeypatch.setattr(generic, "measure", lambda *a: pytest.fail("ran despite the backend"))
    monkeypatch.setattr(gpukb, "list_backends", lambda: ["cpu", "lazy", "far"])
    monkeypatch.setattr(gpukb, "backend_available",
                        lambda name: gpukb.Availability(name != "far", "no such device here"))

    class Lazy:
        array_types = ("dask.array.core:Array",)

    monkeypatch.setattr(gpukb, "get_backend", lambda name: Lazy())
    for name, message in [("lazy", "takes dask.array.core:Array"),
                          ("far", "not available here: no such device here")]:
        with pytest.raises(SystemExit) as exit_:
            generic.main(["--backend", name])
        assert exit_.value.code == 2 and message in capsys.readouterr().err
    assert generic.backend_library("") == "numpy"


def test_gpukb_bench_generic_times_the_torch_backend_on_torch_tensors(capsys):
    """With the torch plugin the step, the arrays and the hand-written loop are torch's."""
    pytest.importorskip("gpukb_torch")
    from gpukb.bench import generic

    assert generic.backend_library("torch") == "torch"
    assert generic.main(["--rounds", "1", "--calls", "2", "--backend", "torch"]) == 0
    out = capsys.readouterr().out
    assert "torch arrays, backend torch" in out
    rows = [line.split("|") for line in out.splitlines() if line.startswith("| none") or
            line.startswith("| random")]
    assert len(rows) == 2
    for row in rows:
        gpukb_ms, hand_ms = float(row[2]), float(row[3])
        assert gpukb_ms > 0 and hand_ms > 0 and "n/a (NumPy only)" in row[4]


def test_a_failing_generic_worker_says_why():
    """A worker that fails (here: torch tensors sent to the cpu backend) is a RuntimeError with
    the worker's last error line, not a CalledProcessError with the worker's whole source."""
    pytest.importorskip("torch")
    from gpukb.bench import generic

    with pytest.raises(RuntimeError, match="gpukb worker .*failed: TypeError: backend 'cpu'"):
        generic.measure("gpukb", False, 1, "cpu", "torch")
