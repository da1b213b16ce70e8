"""Step functions and problems the gpukb-dask tests share; importable on the cluster's workers
(their processes get the test process's sys.path), so steps travel by reference."""

from __future__ import annotations

import os
import time

import numpy as np

import gpukb

UNPICKLED = 0  # how many times a CountedStep was unpickled in this process


def unpickled() -> int:
    return UNPICKLED


def _rebuild(weights, delay, marker):
    global UNPICKLED
    UNPICKLED += 1
    return CountedStep(weights, delay, marker)


class CountedStep:
    """A tanh cell in plain NumPy that counts, per process, how often it is unpickled (the
    test of "weights travel to each worker once"); optionally slow, and touching ``marker``
    when a block starts (the test that kills a worker mid-computation)."""

    def __init__(self, weights, delay=0.0, marker=None):
        self.weights = weights
        self.delay = delay
        self.marker = marker

    def __reduce__(self):
        return _rebuild, (self.weights, self.delay, self.marker)

    def __call__(self, x, states):
        if self.marker is not None and x.shape[0]:
            with open(os.path.join(self.marker, f"{os.getpid()}-{time.monotonic_ns()}"), "w"):
                pass
        if self.delay:
            time.sleep(self.delay)
        h = np.tanh(x @ self.weights["W"] + states[0] @ self.weights["U"])
        return h, [h]


def counted_step_problem(batch=32, steps=6, features=3, units=5, seed=0):
    rng = np.random.default_rng(seed)
    weights = {"W": rng.standard_normal((features, units)) / 2, "U": rng.standard_normal((units, units)) / 2}
    x = rng.standard_normal((batch, steps, features))
    h0 = np.zeros((batch, units))
    return weights, x, h0


def lstm_problem(batch=24, steps=7, features=3, units=4, dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    cell = gpukb.cells.lstm((rng.standard_normal((features, 4 * units)) / 2).astype(dtype),
                            (rng.standard_normal((units, 4 * units)) / 2).astype(dtype),
                            (rng.standard_normal(4 * units) / 10).astype(dtype))
    x = rng.standard_normal((batch, steps, features)).astype(dtype)
    h0 = rng.standard_normal((batch, units)).astype(dtype)
    mask = rng.random((batch, steps)) < 0.7
    return cell, x, [h0, h0.copy()], mask
