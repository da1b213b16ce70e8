"""Where a fused CPU call spends its time: the phases of the kernel's step, each timed alone.

    python -m gpukb.bench.anatomy [--cell lstm|gru|simple_rnn] [--sizes BxTxDxH ...]
                                  [--dtype float32|float64] [--json FILE]

One thread (the process sets NUMBA_NUM_THREADS=1 and one BLAS thread before importing NumPy or
Numba), one chunk of all B rows, the default activations. For each size it times, best of
several repeats:

- ``whole``: the kernel's own time loop over the sequence (``run_cell``);
- ``projection``: ``bias + x_t @ kernel`` for every step (the kernel's ``project_block``);
- ``recurrent``: ``h @ recurrent_kernel`` added onto the projections, T times (``gate_columns``;
  GRU with reset_after: into its own buffer);
- ``pointwise``: the cell's update along every row, T times (``kernels/cpu/{lstm,gru,...}.py``);

and, for the two GEMM phases, their GFLOP/s next to NumPy's (its BLAS, one thread) on the same
products and on a 512 x 512 x 512 product (the core's practical peak). ``whole`` minus the
phases' sum is what the loop itself adds (masking checks, calls, cache misses between phases).
This is what the README's "where gpukb loses, and why" reasons come from.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

for _var in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"   # one thread throughout (this module runs as its own process)

DEFAULT_SIZES = ("32x100x64x128", "8x200x32x256", "256x50x128x256", "1x300x64x512")
_GATES = {"lstm": 4, "gru": 3, "simple_rnn": 1}


def _best(fn, repeats=7, min_seconds=0.05):
    """Best seconds per call of fn() over ``repeats`` timed batches of calls."""
    fn()
    t0 = time.perf_counter()
    fn()
    once = max(time.perf_counter() - t0, 1e-7)
    calls = max(1, int(min_seconds / once))
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - t0) / calls)
    return best


def _harnesses():
    """The compiled phase loops (built on first use: they compile the kernel's pieces)."""
    from numba import njit

    from gpukb.kernels.cells.activations import SIGMOID, TANH
    from gpukb.kernels.cpu import gru, lstm, simple_rnn
    from gpukb.kernels.cpu._gemm import I0, ad, gate_columns, project_block

    @njit(fastmath={"contract"}, error_model="numpy")
    def projection(x, PW, bias, xpb, T, G, H):
        B = x.shape[0]
        tau = xpb.shape[0]
        for s0 in range(0, T, tau):
            project_block(x, False, False, PW, bias, xpb, s0, min(T, s0 + tau), 0, B, G, H, 0, H)

    @njit(fastmath={"contract"}, error_model="numpy")
    def recurrent(z, init, ldi, h, PU, nv, T, G, H):
        B = h.shape[0]
        for _ in range(T):
            gate_columns(z, ad(z), z.shape[1], init, ldi, ad(h), H, PU, H, nv, I0, B, G, H, 0, H)

    @njit(fastmath={"contract"}, error_model="numpy")
    def pointwise(kind, z, rec, c, h, out, T, H):
        B = h.shape[0]
        for _ in range(T):
            for n in range(B):
                if kind == 0:
                    lstm.update_row(z[n], c[n], h[n], out[n], H, 0, H, TANH, SIGMOID)
                elif kind == 1:
                    gru.update_row(z[n], rec[n], h[n], h[n], out[n], H, 0, H, TANH, SIGMOID)
                else:
                    simple_rnn.update_row(z[n], h[n], out[n], 0, H, TANH)

    return projection, recurrent, pointwise, I0, ad


def measure(cell: str, size: str, dtype: str = "float32") -> dict:
    """The phases of one (B, T, D, H) call of ``cell``, in seconds, with GFLOP/s."""
    import numpy as np

    from gpukb.kernels.cells import GRU, LSTM, SIMPLE_RNN
    from gpukb.kernels.cpu import _common as C
    from gpukb.kernels.cpu import run_cell
    from gpukb.kernels.cpu._gemm import panel_vectors
    from gpukb.kernels.options import LoopOptions

    B, T, D, H = (int(v) for v in size.lower().split("x"))
    G = _GATES[cell] * H
    dt = np.dtype(dtype)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((B, T, D)).astype(dt)
    W = (rng.standard_normal((D, G)) * 0.3).astype(dt)
    U = (rng.standard_normal((H, G)) / np.sqrt(H)).astype(dt)
    b = (rng.standard_normal((2, G)) if cell == "gru" else rng.standard_normal(G)).astype(dt)
    states = [np.zeros((B, H), dt) for _ in range(2 if cell == "lstm" else 1)]
    kind = {"lstm": LSTM, "gru": GRU, "simple_rnn": SIMPLE_RNN}[cell]
    activation = ("tanh", "sigmoid") if cell != "simple_rnn" else ("tanh", "linear")

    projection, recurrent, pointwise, I0, ad = _harnesses()
    PW, PU, Gp = C.pack_weights(W, U, G, dt, B)
    nv = np.int64(panel_vectors(B))
    bias = C.padded_bias(b[0] if cell == "gru" else b, G, Gp, dt)
    xpb = C.projection_buffer(T, B, Gp, dt, B, [(0, B, 0, H)])
    z = np.ascontiguousarray(rng.standard_normal((B, Gp)).astype(dt))
    rec = np.ascontiguousarray(rng.standard_normal((B, Gp)).astype(dt))
    h = np.zeros((B, H), dt)
    c = np.zeros((B, H), dt)
    out = np.zeros((B, H), dt)
    cell_code = {"lstm": 0, "gru": 1, "simple_rnn": 2}[cell]
    gru_init = C.padded_bias(b[1], G, Gp, dt) if cell == "gru" else None

    def whole():
        run_cell(kind, x, W, U, b, states, None, LoopOptions(), *activation)

    def recurrent_phase():
        if gru_init is not None:   # rec = recurrent bias + h @ U
            recurrent(rec, ad(gru_init), I0, h, PU, nv, T, G, H)
        else:                      # z += h @ U
            recurrent(z, ad(z), Gp, h, PU, nv, T, G, H)

    seconds = {
        "whole": _best(whole),
        "projection": _best(lambda: projection(x, PW, bias, xpb, T, G, H)),
        "recurrent": _best(recurrent_phase),
        "pointwise": _best(lambda: pointwise(cell_code, z, rec, c, h, out, T, H)),
    }
    flops = {"projection": 2.0 * B * T * D * G, "recurrent": 2.0 * B * T * H * G}
    hb = rng.standard_normal((B, H)).astype(dt)
    xb = rng.standard_normal((B * T, D)).astype(dt)
    big = rng.standard_normal((512, 512)).astype(dt)
    numpy_seconds = {
        "projection": _best(lambda: xb @ W),
        "recurrent": _best(lambda: [hb @ U for _ in range(T)]),
        "peak": _best(lambda: big @ big),
    }
    result = {"cell": cell, "size": {"B": B, "T": T, "D": D, "H": H}, "dtype": dt.name,
              "ms": {k: v * 1e3 for k, v in seconds.items()},
              "other_ms": (seconds["whole"] - seconds["projection"] - seconds["recurrent"]
                           - seconds["pointwise"]) * 1e3,
              "gflops": {k: flops[k] / seconds[k] / 1e9 for k in flops},
              "numpy_gflops": {k: flops[k] / numpy_seconds[k] / 1e9 for k in flops},
              "numpy_peak_gflops": 2 * 512 ** 3 / numpy_seconds["peak"] / 1e9,
              "pointwise_ns_per_unit": seconds["pointwise"] / (B * T * H) * 1e9}
    result["whole_gflops"] = (flops["projection"] + flops["recurrent"]) / seconds["whole"] / 1e9
    return result


def _report(r: dict) -> str:
    s = r["size"]
    ms = r["ms"]
    parts = "  ".join(f"{k} {ms[k]:7.2f} ms ({ms[k] / ms['whole']:4.0%})"
                      for k in ("projection", "recurrent", "pointwise"))
    gemm = "  ".join(f"{k} {r['gflops'][k]:5.1f} GFLOP/s (NumPy {r['numpy_gflops'][k]:5.1f})"
                     for k in ("projection", "recurrent"))
    return (f"{r['cell']} B={s['B']} T={s['T']} D={s['D']} H={s['H']} {r['dtype']}: whole "
            f"{ms['whole']:.2f} ms ({r['whole_gflops']:.1f} GFLOP/s; one-thread NumPy peak "
            f"{r['numpy_peak_gflops']:.0f})\n  {parts}  other {r['other_ms']:6.2f} ms\n  {gemm}"
            f"  pointwise {r['pointwise_ns_per_unit']:.2f} ns/unit")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gpukb.bench.anatomy",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--cell", choices=sorted(_GATES), default="lstm")
    parser.add_argument("--sizes", nargs="+", default=list(DEFAULT_SIZES), metavar="BxTxDxH")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args(argv)
    results = []
    for size in args.sizes:
        r = measure(args.cell, size, args.dtype)
        print(_report(r), flush=True)
        results.append(r)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
