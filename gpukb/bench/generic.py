"""The generic loop's own cost (issue 12 item 5): a plain Python step run by ``gpukb.rnn``
against the same step in a hand-written loop and in Keras 3's NumPy ``rnn``.

    python -m gpukb.bench.generic [--rounds N] [--backend NAME]

Each implementation runs in its own process (so one's imports and allocations cannot slow
another); the rounds are interleaved and each reports its best time, so load from other
processes on the machine shows up as noise in every implementation alike. The step is
``np.tanh(x @ W + h @ U)`` (B=16, T=500, D=8, H=16, float32), unmasked and with a random mask
(the hand-written loop masks with ``np.where``, as Keras does).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

#: (B, T, D, H) of the step.
SIZE = (16, 500, 8, 16)
IMPLEMENTATIONS = ("gpukb", "hand-written", "keras3-numpy")

_WORKER = r"""
import json, os, sys, time
impl, masked, calls, backend = sys.argv[1], sys.argv[2] == "1", int(sys.argv[3]), sys.argv[4]
if impl == "keras3-numpy":
    os.environ["KERAS_BACKEND"] = "numpy"
import numpy as np
B, T, D, H = {size}
rng = np.random.default_rng(0)
x = rng.standard_normal((B, T, D)).astype(np.float32)
W = (rng.standard_normal((D, H)) * 0.3).astype(np.float32)
U = (rng.standard_normal((H, H)) * 0.3).astype(np.float32)
h0 = np.zeros((B, H), np.float32)
mask = rng.random((B, T)) < 0.8 if masked else None

def step(x_t, states):
    h = np.tanh(x_t @ W + states[0] @ U)
    return h, [h]

if impl == "gpukb":
    import gpukb
    run = lambda: gpukb.rnn(step, x, [h0], mask=mask, backend=backend or None)
elif impl == "keras3-numpy":
    try:
        from keras.src.backend.numpy.rnn import rnn as keras_rnn
    except ImportError:
        print(json.dumps(None)); sys.exit(0)
    run = lambda: keras_rnn(step, x, [h0], mask=mask)
else:
    def run():
        states, out, prev = [h0], None, None
        for t in range(T):
            o, new = step(x[:, t], tuple(states))
            if out is None:
                out, prev = np.empty((B, T) + o.shape[1:], o.dtype), np.zeros_like(o)
            if mask is not None:
                keep = mask[:, t, None]
                o = prev = np.where(keep, o, prev)
                new = [np.where(keep, n, s) for n, s in zip(new, states)]
            out[:, t] = o
            states = new
        return o, out, states
run()
best = float("inf")
for _ in range(calls):
    start = time.perf_counter()
    run()
    best = min(best, time.perf_counter() - start)
print(json.dumps(best * 1e3))
"""


def measure(impl: str, masked: bool, calls: int, backend: str) -> float | None:
    """Best ms of ``calls`` calls in a fresh process; None when the implementation is missing."""
    source = _WORKER.replace("{size}", repr(SIZE))
    done = subprocess.run([sys.executable, "-c", source, impl, "1" if masked else "0", str(calls),
                           backend], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


#: Options of ``gpukb bench`` that do not apply with --generic: (option, how to tell it was given).
_REFUSED = (("--model", lambda a: a.model is not None), ("--grid", lambda a: bool(a.grid)),
            ("--plot", lambda a: a.plot is not None), ("--peers", lambda a: a.peers is not None),
            ("--dtypes", lambda a: a.dtypes is not None),
            ("--workloads", lambda a: a.workloads is not None),
            ("--sizes", lambda a: bool(a.sizes)), ("--json", lambda a: a.json is not None),
            ("--repeats", lambda a: a.repeats is not None),
            ("--budget", lambda a: a.budget is not None), ("--quick", lambda a: bool(a.quick)))


def command(args, parser) -> int:
    """``gpukb bench --generic``: ``--rounds N`` and ``--backends NAME`` (one backend) apply;
    the options of other modes are refused before anything runs."""
    from . import command as bench_command

    for option, given in _REFUSED:
        if given(args):
            parser.error(f"{option} does not apply with --generic (it times one plain Python "
                         f"step, B, T, D, H = {SIZE}; --rounds and --backends apply).")
    bench_command.refuse_options(args, parser, bench_command.GRID_ONLY[:2],
                                 "only applies with --grid")
    if args.rounds is not None and args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}.")
    backends = bench_command.common_settings(args, parser)["backends"] or []
    if len(backends) > 1:
        parser.error("--backends: --generic times one backend at a time, got "
                     f"{', '.join(backends)}.")
    argv = ["--rounds", str(args.rounds or 3)]
    return main(argv + (["--backend", backends[0]] if backends else []))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gpukb.bench.generic", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--calls", type=int, default=20, help="timed calls per round (default 20)")
    parser.add_argument("--backend", default="", help="gpukb backend (default: gpukb's choice)")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.calls < 1:
        parser.error("--rounds and --calls must be at least 1.")
    best: dict = {}
    for _ in range(args.rounds):
        for masked in (False, True):
            for impl in IMPLEMENTATIONS:
                ms = measure(impl, masked, args.calls, args.backend)
                key = (impl, masked)
                best[key] = ms if best.get(key) is None or ms is None else min(best[key], ms)
    print(f"generic loop, B, T, D, H = {SIZE}, best ms of {args.rounds} rounds x {args.calls} calls")
    print("| mask | gpukb | hand-written | keras3-numpy | gpukb / hand-written | gpukb / keras3-numpy |")
    print("|---|---:|---:|---:|---:|---:|")
    for masked in (False, True):
        g, h, k = (best[(impl, masked)] for impl in IMPLEMENTATIONS)
        keras = "not installed" if k is None else f"{k:.2f}"
        ratio_k = "" if k is None else f"{g / k:.2f}"
        print(f"| {'random' if masked else 'none'} | {g:.2f} | {h:.2f} | {keras} | {g / h:.2f} | {ratio_k} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
