"""The benchmark workloads: sizes, Keras-layout weights, FLOP counts and the float64 reference.

A workload is a recurrent cell run forward over a whole sequence, returning every step's output
``(B, T, H)``. Weights use the tf.keras layout (see ``gpukb.cells``): LSTM gates i, f, c, o with
kernel (D, 4H), recurrent_kernel (H, 4H), bias (4H,); GRU gates z, r, h with ``reset_after=True``
(the Keras default), kernel (D, 3H), recurrent_kernel (H, 3H), bias (2, 3H); SimpleRNN kernel
(D, H), recurrent_kernel (H, H), bias (H,). Every implementation is checked against ``reference``,
a plain float64 NumPy loop written independently of gpukb.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

#: Kernel columns per unit for each cell kind.
GATES = {"lstm": 4, "gru": 3, "simple_rnn": 1}
#: Every workload ``--workloads`` accepts (every peer implements each one).
WORKLOADS = ("lstm", "gru", "simple_rnn")
#: The workloads ``gpukb bench`` runs when ``--workloads`` is not given.
BENCH_WORKLOADS = ("lstm", "gru")
#: The floating-point types ``--dtypes`` accepts; float32 unless asked.
DTYPES = ("float32", "float64")


@dataclass(frozen=True)
class Size:
    """Batch B, time steps T, input features D, units H."""

    B: int
    T: int
    D: int
    H: int

    def __post_init__(self):
        for name in ("B", "T", "D", "H"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"size: {name} must be a positive integer, got {value!r}.")

    @property
    def label(self) -> str:
        return f"B={self.B} T={self.T} D={self.D} H={self.H}"

    @property
    def key(self) -> str:
        """Compact form, as ``--sizes`` and the asv parameters spell it: ``32x100x64x128``."""
        return f"{self.B}x{self.T}x{self.D}x{self.H}"

    def as_dict(self) -> dict:
        return {"B": self.B, "T": self.T, "D": self.D, "H": self.H}

    @classmethod
    def parse(cls, text: str) -> "Size":
        """``"32x100x64x128"`` or ``"32,100,64,128"`` (B, T, D, H)."""
        parts = re.split(r"[x,]", text.strip().lower())
        if len(parts) != 4 or not all(p.strip().isdigit() for p in parts):
            raise ValueError(
                f"size {text!r}: expected four positive integers B x T x D x H, e.g. 32x100x64x128."
            )
        return cls(*(int(p) for p in parts))


#: The full run's sizes (B, T, D, H).
FULL_SIZES = (Size(32, 100, 64, 128), Size(1, 1000, 32, 64), Size(256, 50, 128, 256))
#: ``--quick``: the same three shapes (batched, long sequence, wide), smaller.
QUICK_SIZES = (Size(16, 50, 32, 64), Size(1, 200, 16, 32), Size(64, 20, 64, 128))


def flops(workload: str, size: Size) -> int:
    """Multiply-adds of the two matrix products, counted as 2 FLOPs each:
    ``2*B*T*(D+H)*gates*H`` (LSTM: 4 gates, GRU: 3, SimpleRNN: 1). Activations are not counted."""
    return 2 * size.B * size.T * (size.D + size.H) * GATES[workload] * size.H


@dataclass(eq=False)
class Problem:
    """One workload at one size: float32 inputs, zero initial states, weights, and (lazily) the
    float64 reference outputs ``(B, T, H)``."""

    workload: str
    size: Size
    x: np.ndarray
    kernel: np.ndarray
    recurrent_kernel: np.ndarray
    bias: np.ndarray
    h0: np.ndarray
    c0: np.ndarray | None
    #: Check only the first ``check_rows`` samples (None: all). Samples are independent, so the
    #: reference of a large batch need not cost as much as the whole batch.
    check_rows: int | None = None
    _reference: np.ndarray | None = None

    @property
    def flops(self) -> int:
        return flops(self.workload, self.size)

    @property
    def dtype(self) -> str:
        """``"float32"`` or ``"float64"``: the type of the inputs, weights and states."""
        return self.x.dtype.name

    @property
    def states(self) -> list:
        """Initial states as ``gpukb.rnn`` takes them: ``[h, c]`` (LSTM) or ``[h]``."""
        return [self.h0, self.c0] if self.c0 is not None else [self.h0]

    @property
    def weights(self) -> tuple:
        return self.kernel, self.recurrent_kernel, self.bias

    def cell(self):
        """The matching ``gpukb.cells`` cell over NumPy weights."""
        from .. import cells

        factory = {"lstm": cells.lstm, "gru": cells.gru, "simple_rnn": cells.simple_rnn}
        return factory[self.workload](*self.weights)

    @property
    def reference(self) -> np.ndarray:
        if self._reference is None:
            rows = slice(self.check_rows)
            self._reference = reference(self.workload, self.x[rows], *self.weights,
                                        *(s[rows] for s in self.states))
        return self._reference

    def relative_error(self, outputs) -> float:
        return relative_error(np.asarray(outputs)[:self.check_rows], self.reference)

    def reference_file(self, folder: str) -> str:
        """Where ``save_reference`` keeps this problem's reference in ``folder``."""
        import os

        size = self.size
        name = (f"{self.workload}-{self.dtype}-{size.B}x{size.T}x{size.D}x{size.H}"
                f"-{self.check_rows}.npy")
        return os.path.join(folder, name)

    def save_reference(self, folder: str) -> None:
        np.save(self.reference_file(folder), self.reference)

    def load_reference(self, folder: str) -> None:
        """Take the reference that ``save_reference`` wrote (the benchmark workers: computing it
        there ran BLAS, whose threads then spin for a while and take a core from the next
        point's timed calls)."""
        self._reference = np.load(self.reference_file(folder))


def make_problem(workload: str, size: Size, seed: int = 0, dtype=np.float32,
                 check_rows: int | None = None) -> Problem:
    """Random inputs and weights (scaled like Glorot so activations stay in range), in ``dtype``
    (float32 or float64: the same random draws, rounded to ``dtype``).
    ``check_rows``: see ``Problem.check_rows``."""
    if workload not in GATES:
        raise ValueError(f"unknown workload {workload!r}; known: {', '.join(GATES)}.")
    if np.dtype(dtype).name not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {np.dtype(dtype).name}.")
    if check_rows is not None and (not isinstance(check_rows, int) or check_rows < 1):
        raise ValueError(f"check_rows must be a positive integer or None, got {check_rows!r}.")
    rng = np.random.default_rng(seed)
    B, T, D, H = size.B, size.T, size.D, size.H
    width = GATES[workload] * H
    x = rng.standard_normal((B, T, D)).astype(dtype)
    kernel = (rng.standard_normal((D, width)) / np.sqrt(D)).astype(dtype)
    recurrent_kernel = (rng.standard_normal((H, width)) / np.sqrt(H)).astype(dtype)
    bias_shape = (2, width) if workload == "gru" else (width,)
    bias = (rng.standard_normal(bias_shape) * 0.1).astype(dtype)
    h0 = np.zeros((B, H), dtype)
    c0 = np.zeros((B, H), dtype) if workload == "lstm" else None
    return Problem(workload, size, x, kernel, recurrent_kernel, bias, h0, c0, check_rows)


def make_mask(kind: str, batch: int, steps: int, seed: int = 0) -> np.ndarray | None:
    """A ``(B, T)`` bool mask: ``"none"`` (None), ``"right_padded"`` (each sequence a valid prefix
    of random length >= 1, then padding) or ``"random"`` (each step valid with probability 0.8)."""
    rng = np.random.default_rng(seed + 1)
    if kind == "none":
        return None
    if kind == "right_padded":
        lengths = rng.integers(1, steps + 1, size=batch)
        return np.arange(steps)[None, :] < lengths[:, None]
    if kind == "random":
        return rng.random((batch, steps)) < 0.8
    raise ValueError(f"unknown mask kind {kind!r}; known: none, right_padded, random.")


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def reference(workload, x, kernel, recurrent_kernel, bias, h0, c0=None) -> np.ndarray:
    """Every step's output ``(B, T, H)`` computed in float64 with plain NumPy."""
    f64 = np.float64
    W, U, b = kernel.astype(f64), recurrent_kernel.astype(f64), bias.astype(f64)
    h = np.asarray(h0, f64).copy()
    H = h.shape[1]
    xw = np.asarray(x, f64) @ W  # (B, T, gates*H): the input projection of every step at once
    outputs = np.empty((x.shape[0], x.shape[1], H), f64)
    if workload == "lstm":
        c = np.asarray(c0, f64).copy()
        for t in range(x.shape[1]):
            z = xw[:, t] + h @ U + b
            i, f = _sigmoid(z[:, :H]), _sigmoid(z[:, H:2 * H])
            g, o = np.tanh(z[:, 2 * H:3 * H]), _sigmoid(z[:, 3 * H:])
            c = f * c + i * g
            h = o * np.tanh(c)
            outputs[:, t] = h
    elif workload == "gru":  # reset_after=True: bias rows are (input, recurrent)
        for t in range(x.shape[1]):
            mx = xw[:, t] + b[0]
            mh = h @ U + b[1]
            z = _sigmoid(mx[:, :H] + mh[:, :H])
            r = _sigmoid(mx[:, H:2 * H] + mh[:, H:2 * H])
            hh = np.tanh(mx[:, 2 * H:] + r * mh[:, 2 * H:])
            h = z * h + (1.0 - z) * hh
            outputs[:, t] = h
    elif workload == "simple_rnn":
        for t in range(x.shape[1]):
            h = np.tanh(xw[:, t] + b + h @ U)
            outputs[:, t] = h
    else:
        raise ValueError(f"unknown workload {workload!r}; known: {', '.join(GATES)}.")
    return outputs


def _norm(a) -> float:
    """The Frobenius norm without BLAS. ``np.linalg.norm`` is a BLAS dot product, which on a
    large array wakes OpenBLAS's threads, and they spin for a while after it: in a benchmark
    worker that checks a point's outputs and then times the next point, that spinning took a core
    from the timed calls (gpukb's LSTM (8, 32, 128, 256), split over two threads that meet every
    step: median 4.9-5.3 ms, 2.3-2.6 with OPENBLAS_NUM_THREADS=1)."""
    a = np.asarray(a, np.float64)
    return float(np.sqrt(np.sum(a * a)))


def relative_error(outputs, ref) -> float:
    """``||outputs - ref|| / ||ref||`` (Frobenius norms, in float64)."""
    outputs = np.asarray(outputs, np.float64)
    if outputs.shape != ref.shape:
        raise ValueError(f"outputs have shape {outputs.shape}, the reference {ref.shape}.")
    denominator = _norm(ref)
    return _norm(outputs - ref) / (denominator if denominator else 1.0)
