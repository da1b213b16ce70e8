"""The generic loop's own cost (issue 12 item 5): a plain Python step run by ``gpukb.rnn``
against the same step in a hand-written loop and in Keras 3's NumPy ``rnn``.

    python -m gpukb.bench.generic [--rounds N] [--backend NAME]

Each implementation runs in its own process (so one's imports and allocations cannot slow
another); the rounds are interleaved and each reports its best time, so load from other
processes on the machine shows up as noise in every implementation alike. The step is
``np.tanh(x @ W + h @ U)`` (B=16, T=500, D=8, H=16, float32), unmasked and with a random mask
(the hand-written loop masks with ``np.where``, as Keras does). With ``--backend NAME`` the
arrays, the step and the hand-written loop are the backend's own library's (``torch.tanh`` on
torch tensors for the torch plugin, CuPy for cuda; a CuPy call's time includes a device
synchronisation).
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
impl, masked, calls, backend, library = sys.argv[1], sys.argv[2] == "1", int(sys.argv[3]), sys.argv[4], sys.argv[5]
if impl == "keras3-numpy":
    if library != "numpy":   # Keras 3's NumPy rnn takes NumPy arrays only
        print(json.dumps(None)); sys.exit(0)
    os.environ["KERAS_BACKEND"] = "numpy"
import numpy as np
B, T, D, H = {size}
rng = np.random.default_rng(0)
arrays = dict(x=rng.standard_normal((B, T, D)).astype(np.float32),
              W=(rng.standard_normal((D, H)) * 0.3).astype(np.float32),
              U=(rng.standard_normal((H, H)) * 0.3).astype(np.float32),
              h0=np.zeros((B, H), np.float32),
              mask=rng.random((B, T)) < 0.8 if masked else None)
# The same values in the backend's own arrays; each library's empty, zeros_like and where.
if library == "torch":
    import torch
    xp, sync = torch, lambda: None
    arrays = {k: None if v is None else torch.from_numpy(v) for k, v in arrays.items()}
    empty = lambda shape, like: torch.empty(shape, dtype=like.dtype, device=like.device)
elif library == "cupy":
    import cupy
    xp, sync = cupy, lambda: cupy.cuda.Device().synchronize()
    arrays = {k: None if v is None else cupy.asarray(v) for k, v in arrays.items()}
    empty = lambda shape, like: cupy.empty(shape, like.dtype)
else:
    xp, sync = np, lambda: None
    empty = lambda shape, like: np.empty(shape, like.dtype)
x, W, U, h0, mask = (arrays[k] for k in ("x", "W", "U", "h0", "mask"))

def step(x_t, states):
    h = xp.tanh(x_t @ W + states[0] @ U)
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
                out, prev = empty((B, T) + tuple(o.shape[1:]), o), xp.zeros_like(o)
            if mask is not None:
                keep = mask[:, t, None]
                o = prev = xp.where(keep, o, prev)
                new = [xp.where(keep, n, s) for n, s in zip(new, states)]
            out[:, t] = o
            states = new
        return o, out, states
run()
sync()
best = float("inf")
for _ in range(calls):
    start = time.perf_counter()
    run()
    sync()
    best = min(best, time.perf_counter() - start)
print(json.dumps(best * 1e3))
"""

#: The array libraries the step and the hand-written loop are written for.
LIBRARIES = ("numpy", "torch", "cupy")


def backend_library(backend: str) -> str:
    """The array library to time ``backend`` with: the library of the first array type it
    accepts (NumPy for gpukb's own choice). ValueError, before anything runs, for a backend
    that is unknown, unavailable here, or takes arrays of another library (the dask backend
    takes each call over, on dask arrays)."""
    if not backend:
        return "numpy"
    import gpukb

    if backend not in gpukb.list_backends():
        raise ValueError(f"--backends: unknown backend {backend!r}; known: "
                         f"{', '.join(gpukb.list_backends())}.")
    available = gpukb.backend_available(backend)
    if not available:
        raise ValueError(f"--backends: backend {backend!r} is not available here: "
                         f"{available.reason}.")
    types = gpukb.get_backend(backend).array_types
    library = types[0].split(":")[0].split(".")[0] if types else ""
    if library not in LIBRARIES:
        raise ValueError(f"--backends: backend {backend!r} takes {', '.join(types) or 'no arrays'}; "
                         f"the generic-loop benchmark writes its step and the hand-written loop "
                         f"for {', '.join(LIBRARIES)} arrays.")
    return library


def measure(impl: str, masked: bool, calls: int, backend: str, library: str = "numpy") -> float | None:
    """Best ms of ``calls`` calls in a fresh process; None when the implementation is missing
    (or, Keras 3's NumPy rnn, does not take ``library``'s arrays). RuntimeError with the
    worker's error when it fails."""
    source = _WORKER.replace("{size}", repr(SIZE))
    done = subprocess.run([sys.executable, "-c", source, impl, "1" if masked else "0", str(calls),
                           backend, library], capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"the {impl} worker ({library} arrays, backend {backend or 'auto'}) "
                           f"failed: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode}")
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
    the options of other modes, and a backend it cannot time, are refused before anything
    runs."""
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
    try:
        backend_library(backends[0] if backends else "")
    except ValueError as error:
        parser.error(str(error))
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
    try:
        library = backend_library(args.backend)
    except ValueError as error:
        parser.error(str(error))
    best: dict = {}
    for _ in range(args.rounds):
        for masked in (False, True):
            for impl in IMPLEMENTATIONS:
                ms = measure(impl, masked, args.calls, args.backend, library)
                key = (impl, masked)
                best[key] = ms if best.get(key) is None or ms is None else min(best[key], ms)
    on = f"backend {args.backend}" if args.backend else "gpukb's choice of backend"
    print(f"generic loop, B, T, D, H = {SIZE}, {library} arrays, {on}, best ms of "
          f"{args.rounds} rounds x {args.calls} calls")
    print("| mask | gpukb | hand-written | keras3-numpy | gpukb / hand-written | gpukb / keras3-numpy |")
    print("|---|---:|---:|---:|---:|---:|")
    for masked in (False, True):
        g, h, k = (best[(impl, masked)] for impl in IMPLEMENTATIONS)
        keras = ("not installed" if library == "numpy" else "n/a (NumPy only)") if k is None \
            else f"{k:.2f}"
        ratio_k = "" if k is None else f"{g / k:.2f}"
        print(f"| {'random' if masked else 'none'} | {g:.2f} | {h:.2f} | {keras} | {g / h:.2f} | {ratio_k} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
