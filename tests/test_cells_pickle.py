"""gpukb cells pickle, deep-copy and cross to a spawned worker process: rebuilt from their
weights and configuration (a frozen cell stays frozen), with the same results; what a cell keeps
between calls (its array module, packed weights, plans, checked call structures) is not carried
and is made again where the copy is used."""

import copy
import multiprocessing
import pickle

import numpy as np
import pytest

import gpukb

rng = np.random.default_rng(0)
B, T, D, H = 2, 5, 3, 4


def _weights(*shapes, dtype=np.float32):
    return [(0.5 * rng.standard_normal(s)).astype(dtype) for s in shapes]


CELLS = {
    "lstm": lambda: gpukb.cells.lstm(*_weights((D, 4 * H), (H, 4 * H), (4 * H,)),
                                     activation="relu"),
    "gru": lambda: gpukb.cells.gru(*_weights((D, 3 * H), (H, 3 * H), (2, 3 * H))),
    "gru_reset_before": lambda: gpukb.cells.gru(*_weights((D, 3 * H), (H, 3 * H), (3 * H,)),
                                                reset_after=False,
                                                recurrent_activation="hard_sigmoid"),
    "simple_rnn": lambda: gpukb.cells.simple_rnn(*_weights((D, H), (H, H), (H,)),
                                                 activation="linear"),
}


def _call(cell, x):
    states = [np.zeros((B, H), x.dtype) for _ in range(cell.n_states)]
    return gpukb.rnn(cell, x, states)[1]


@pytest.mark.parametrize("frozen", [False, True], ids=["plain", "frozen"])
@pytest.mark.parametrize("name", list(CELLS))
def test_a_used_cell_pickles_and_deep_copies(name, frozen):
    cell = CELLS[name]()
    if frozen:
        cell.freeze()
    x = rng.standard_normal((B, T, D)).astype(np.float32)
    want = _call(cell, x)
    _call(cell, x)   # a repeated call: the cell now keeps a checked call structure and plans
    for twin in (pickle.loads(pickle.dumps(cell)), copy.deepcopy(cell)):
        assert type(twin) is type(cell) and repr(twin) == repr(cell)
        assert twin.frozen == frozen
        np.testing.assert_array_equal(_call(twin, x), want)
        if frozen:
            with pytest.raises(ValueError):
                twin.kernel[0, 0] = 1.0   # still read-only
        else:
            assert twin.kernel is not cell.kernel


def _outputs_in_worker(cell, x):
    return _call(cell, x)


def test_a_used_cell_goes_to_a_spawned_worker():
    """A process pool with the spawn start method (macOS's and Windows' default) pickles its
    arguments: a cell that has run here runs there, with the same results."""
    cell = CELLS["lstm"]().freeze()
    x = rng.standard_normal((B, T, D)).astype(np.float32)
    want = _call(cell, x)
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        got = pool.apply(_outputs_in_worker, (cell, x))
    np.testing.assert_array_equal(got, want)
