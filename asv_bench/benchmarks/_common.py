"""Shared set-up for the asv benchmarks: sizes, random Keras-layout weights, masks, and a Case
that runs ``gpukb.rnn`` on one backend (synchronised when the backend queues GPU work).

Self-contained (NumPy and gpukb's public API only), so that the benchmarks also run against older
commits of gpukb.
"""

import os

import numpy as np

#: (B, T, D, H) as "BxTxDxH": batched, long sequence, wide. GPUKB_ASV_SIZES (comma-separated, same
#: spelling) replaces them, e.g. for CI's smoke run: GPUKB_ASV_SIZES=3x4x2x5.
SIZES = ["32x100x64x128", "1x1000x32x64", "256x50x128x256"]
if os.environ.get("GPUKB_ASV_SIZES"):
    SIZES = [s.strip() for s in os.environ["GPUKB_ASV_SIZES"].split(",") if s.strip()]
CELLS = ["lstm", "gru", "simple_rnn", "python_step"]
MASKS = ["none", "right_padded", "random"]
BACKENDS = ["cpu", "cuda"]
GATES = {"lstm": 4, "gru": 3, "simple_rnn": 1, "python_step": 4}


def parse_size(size):
    return tuple(int(n) for n in size.split("x"))


def backend_or_skip(name):
    """The gpukb backend called ``name``; NotImplementedError (asv's "skip") when it cannot run."""
    import gpukb

    try:
        backend = gpukb.get_backend(name)
    except (ValueError, RuntimeError) as error:
        raise NotImplementedError(f"gpukb backend {name!r}: {error}")
    if getattr(backend, "simulated", False):
        raise NotImplementedError(f"gpukb backend {name!r} runs on Numba's CUDA simulator")
    return backend


def make_mask(kind, batch, steps, rng):
    if kind == "none":
        return None
    if kind == "right_padded":  # a valid prefix of random length >= 1, then padding
        lengths = rng.integers(1, steps + 1, size=batch)
        return np.arange(steps)[None, :] < lengths[:, None]
    if kind == "random":
        return rng.random((batch, steps)) < 0.8
    raise ValueError(f"unknown mask kind {kind!r}")


def _python_lstm_step(W, U, b):
    """The LSTM written as a plain Python step function: gpukb runs it with its generic loop."""
    xp = __import__(type(W).__module__.split(".")[0])  # numpy or cupy, as the weights
    H = U.shape[0]

    def sigmoid(z):
        return 1.0 / (1.0 + xp.exp(-z))

    def step(x, states):
        h, c = states[0], states[1]
        z = x @ W + h @ U + b
        i, f = sigmoid(z[:, :H]), sigmoid(z[:, H:2 * H])
        g, o = xp.tanh(z[:, 2 * H:3 * H]), sigmoid(z[:, 3 * H:])
        c = f * c + i * g
        h = o * xp.tanh(c)
        return h, [h, c]

    return step


def _synchronizer(backend):
    if getattr(backend.xp, "__name__", "") == "cupy":
        import cupy

        return lambda: cupy.cuda.get_current_stream().synchronize()
    return lambda: None


class Case:
    """``gpukb.rnn(step, inputs, states, mask=mask, backend=name)`` with every array already on
    the backend (conversion is set-up, not timing)."""

    def __init__(self, backend_name, cell, size, mask, seed=0):
        import gpukb

        backend = backend_or_skip(backend_name)
        B, T, D, H = parse_size(size)
        rng = np.random.default_rng(seed)
        width = GATES[cell] * H
        f32 = np.float32
        W = (rng.standard_normal((D, width)) / np.sqrt(D)).astype(f32)
        U = (rng.standard_normal((H, width)) / np.sqrt(H)).astype(f32)
        b = (rng.standard_normal((2, width) if cell == "gru" else (width,)) * 0.1).astype(f32)
        x = rng.standard_normal((B, T, D)).astype(f32)
        n_states = 2 if cell in ("lstm", "python_step") else 1
        convert = backend.asarray
        W, U, b = convert(W), convert(U), convert(b)
        if cell == "python_step":
            self.step = _python_lstm_step(W, U, b)
        else:
            factory = {"lstm": gpukb.cells.lstm, "gru": gpukb.cells.gru,
                       "simple_rnn": gpukb.cells.simple_rnn}[cell]
            self.step = factory(W, U, b)
        self.inputs = convert(x)
        self.states = [convert(np.zeros((B, H), f32)) for _ in range(n_states)]
        m = make_mask(mask, B, T, rng)
        self.mask = None if m is None else convert(m)
        self.backend_name = backend_name
        self.convert = convert   # NumPy -> the backend's arrays
        self.sync = _synchronizer(backend)
        self._rnn = gpukb.rnn

    def run(self):
        result = self._rnn(self.step, self.inputs, self.states, mask=self.mask,
                           backend=self.backend_name)
        self.sync()  # inside the timed region: wait for queued GPU work
        return result
