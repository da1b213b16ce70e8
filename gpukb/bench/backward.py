"""``gpukb bench --backward``: forward + backward of LSTM and GRU, gpukb against its peers.

Each implementation computes ``d inputs`` of ``loss = sum(outputs * dy)`` (one forward and one
backward over the whole sequence) in a process of its own (``python -m gpukb.bench.backward
--worker SPEC``), timed as the forward bench times (``runner.measure``):

- ``gpukb[cpu]``: ``gpukb.rnn_vjp`` of a ``gpukb.cells`` cell, then its pullback;
- ``gpukb_torch``: the torch plugin's drop-in ``gpukb_torch.LSTM``/``GRU`` (same weights), as
  ``torch`` below: what a PyTorch training loop gets (skipped without the plugin);
- ``torch``: ``torch.nn.LSTM``/``GRU`` (same weights) forward, then ``.backward(dy)``;
- ``jax``: ``jax.vjp`` of the cell iterated by ``lax.scan``, forward and backward in one
  ``jax.jit``.

The rel. error column compares each one's input gradient with a float64 reference: gpukb's
generic path (the cells' step derivatives in NumPy, no fused kernel) on the same problem,
computed once in the parent process. Inputs, weights and dy are float32, from a fixed seed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

import numpy as np

from .runner import Result, add_ratios, measure
from .workloads import Size

FULL_SIZES = (Size(32, 100, 64, 128), Size(1, 1000, 32, 64), Size(8, 200, 32, 256),
              Size(256, 50, 128, 256))
QUICK_SIZES = (Size(4, 20, 8, 16),)
WORKLOADS = ("lstm", "gru")
IMPLEMENTATIONS = ("gpukb[cpu]", "gpukb_torch", "torch", "jax")
LABELS = {"gpukb[cpu]": "gpukb.rnn_vjp + pullback",
          "gpukb_torch": "gpukb_torch.{cell} (drop-in) + backward",
          "torch": "torch nn.{cell} + backward",
          "jax": "jax.vjp(lax.scan), jit"}
GATES = {"lstm": 4, "gru": 3}
LEGEND = ("median ms: median wall time of one forward and one backward pass over the whole "
          "sequence (two warm-up calls, the first with compilation, not timed); GFLOP/s: "
          "3 * 2*B*T*(D+H)*gates*H / median (the backward counted as twice the forward); "
          "vs fastest peer: median / the fastest peer's median; rel. error: ||dx - ref|| / ||ref||"
          " of the input gradient against a float64 reference (gpukb's generic path).")


def problem(workload: str, size: Size, seed: int = 0) -> dict:
    """Float32 arrays of one problem in the Keras layout (gates LSTM i,f,c,o; GRU z,r,h with
    reset_after, bias (2, 3H)); zero initial states; ``dy`` the outputs' cotangent."""
    rng = np.random.default_rng(seed)
    B, T, D, H = size.B, size.T, size.D, size.H
    G = GATES[workload] * H
    arrays = {"x": rng.standard_normal((B, T, D)),
              "kernel": rng.standard_normal((D, G)) * 0.6 / np.sqrt(D),
              "recurrent_kernel": rng.standard_normal((H, G)) * 0.6 / np.sqrt(H),
              "bias": rng.standard_normal((G,) if workload == "lstm" else (2, G)) * 0.1,
              "dy": rng.standard_normal((B, T, H))}
    return {k: v.astype(np.float32) for k, v in arrays.items()}


def flops(workload: str, size: Size) -> int:
    return 3 * 2 * size.B * size.T * (size.D + size.H) * GATES[workload] * size.H


def _cell(workload, p, dtype):
    import gpukb

    W, U, b = (p[k].astype(dtype) for k in ("kernel", "recurrent_kernel", "bias"))
    if workload == "lstm":
        return gpukb.cells.lstm(W, U, b)
    return gpukb.cells.gru(W, U, b, reset_after=True)


def reference(workload: str, p: dict) -> np.ndarray:
    """The input gradient in float64 on gpukb's generic path (no fused kernel)."""
    import gpukb
    from gpukb._backend import Backend
    from gpukb._plan import GENERIC, Plan

    cell = _cell(workload, p, np.float64)
    x = p["x"].astype(np.float64)
    B, H = x.shape[0], p["recurrent_kernel"].shape[0]
    states = [np.zeros((B, H))] * (2 if workload == "lstm" else 1)
    backend = gpukb.get_backend("cpu")
    call = backend.prepare(cell, x, states)
    _, pullback = Backend.run_vjp_plan(backend, Plan("cpu", GENERIC, "reference"), call,
                                       (x, states))
    return pullback(p["dy"].astype(np.float64)).inputs


# --------------------------------------------------------------------------------------------
# The implementations: build(workload, p) -> run() returning the input gradient (NumPy)
# --------------------------------------------------------------------------------------------

def _gpukb(workload, p):
    import gpukb

    cell = _cell(workload, p, np.float32)
    x, dy = p["x"], p["dy"]
    states = [np.zeros((x.shape[0], cell.units), np.float32)] * (2 if workload == "lstm" else 1)

    def run():
        _, pullback = gpukb.rnn_vjp(cell, x, states)
        return pullback(dy).inputs

    return run, {"gpukb": gpukb.__version__}


def _torch_weights(workload, p, H):
    """torch's (w_ih, w_hh, b_ih, b_hh) from the Keras layout (GRU: gates z,r,h -> r,z,n)."""
    W, U, b = p["kernel"], p["recurrent_kernel"], p["bias"]
    if workload == "lstm":
        return W.T, U.T, b, np.zeros_like(b)
    order = np.r_[H:2 * H, 0:H, 2 * H:3 * H]
    return W[:, order].T, U[:, order].T, b[0, order], b[1, order]


def _torch(workload, p, library=None):
    import torch

    library = torch.nn if library is None else library
    B, T, D = p["x"].shape
    H = p["recurrent_kernel"].shape[0]
    module = (library.LSTM if workload == "lstm" else library.GRU)(D, H, batch_first=True)
    with torch.no_grad():
        for name, value in zip(("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"),
                               _torch_weights(workload, p, H)):
            getattr(module, name).copy_(torch.from_numpy(np.ascontiguousarray(value)))
    dy = torch.from_numpy(p["dy"])

    def run():
        x = torch.from_numpy(p["x"]).requires_grad_(True)
        module.zero_grad(set_to_none=True)
        y, _ = module(x)
        y.backward(dy)
        return x.grad.numpy()

    return run, {"torch": torch.__version__, "torch threads": torch.get_num_threads()}


def _jax(workload, p):
    import jax
    import jax.numpy as jnp

    H = p["recurrent_kernel"].shape[0]

    def forward(x, W, U, b):
        h0 = jnp.zeros((x.shape[0], H), x.dtype)
        xs = jnp.swapaxes(x, 0, 1)
        if workload == "lstm":
            def step(carry, xt):
                h, c = carry
                z = xt @ W + h @ U + b
                i, f = jax.nn.sigmoid(z[:, :H]), jax.nn.sigmoid(z[:, H:2 * H])
                g, o = jnp.tanh(z[:, 2 * H:3 * H]), jax.nn.sigmoid(z[:, 3 * H:])
                c = f * c + i * g
                h = o * jnp.tanh(c)
                return (h, c), h
            _, hs = jax.lax.scan(step, (h0, h0), xs)
        else:
            def step(h, xt):
                mx, mh = xt @ W + b[0], h @ U + b[1]
                z = jax.nn.sigmoid(mx[:, :H] + mh[:, :H])
                r = jax.nn.sigmoid(mx[:, H:2 * H] + mh[:, H:2 * H])
                hh = jnp.tanh(mx[:, 2 * H:] + r * mh[:, 2 * H:])
                h = z * h + (1 - z) * hh
                return h, h
            _, hs = jax.lax.scan(step, h0, xs)
        return jnp.swapaxes(hs, 0, 1)

    @jax.jit
    def grad(x, W, U, b, dy):
        _, pullback = jax.vjp(lambda x_: forward(x_, W, U, b), x)
        return pullback(dy)[0]

    args = [jnp.asarray(p[k]) for k in ("x", "kernel", "recurrent_kernel", "bias", "dy")]

    def run():
        return np.asarray(grad(*args).block_until_ready())

    return run, {"jax": jax.__version__}


def _gpukb_torch(workload, p):
    """The drop-in module in torch's place (``_torch``), its forward and backward gpukb's."""
    import gpukb_torch

    run, versions = _torch(workload, p, gpukb_torch)
    return run, dict(versions, gpukb_torch=getattr(gpukb_torch, "__version__", "?"))


BUILDERS = {"gpukb[cpu]": _gpukb, "gpukb_torch": _gpukb_torch, "torch": _torch, "jax": _jax}


# --------------------------------------------------------------------------------------------
# Worker and parent
# --------------------------------------------------------------------------------------------

def worker(spec: dict) -> None:
    """Run one implementation over the spec's problems; one JSON line per result on stdout."""
    key = spec["key"]
    for point in spec["points"]:
        workload, size = point["workload"], Size(**point["size"])
        row = {"workload": workload, "size": size.as_dict(), "key": key}
        try:
            p = problem(workload, size)
            run, versions = BUILDERS[key](workload, p)
            dx, timing = measure(run, repeats=spec["repeats"], budget_s=spec["budget"])
            ref = np.load(point["reference"])
            row.update(status="ok", median_s=timing.median_s, min_s=timing.min_s,
                       repeats=len(timing.times_s), first_call_s=timing.first_call_s,
                       relative_error=float(np.linalg.norm(dx - ref) / np.linalg.norm(ref)),
                       versions=versions)
        except ImportError as error:
            row.update(status="skipped", error=str(error))
        except Exception as error:  # noqa: BLE001 - reported in the table
            row.update(status="error", error=f"{type(error).__name__}: {error}")
        print(json.dumps(row), flush=True)


def _result(row: dict) -> Result:
    workload, size, key = row["workload"], Size(**row["size"]), row["key"]
    label = LABELS[key].format(cell="LSTM" if workload == "lstm" else "GRU")
    result = Result(workload=workload, size=size, implementation=f"{key}: {label}", key=key,
                    kind="gpukb" if key.startswith("gpukb") else "peer",
                    flops=flops(workload, size), status=row["status"],
                    error=row.get("error", ""))
    if row["status"] == "ok":
        for name in ("median_s", "min_s", "repeats", "first_call_s", "relative_error"):
            setattr(result, name, row[name])
    return result


def run(sizes=FULL_SIZES, workloads=WORKLOADS, implementations=IMPLEMENTATIONS, *, repeats=30,
        budget=3.0, stream=sys.stdout, peak: float | None = None) -> list[Result]:
    """Time every implementation, each in its own process; print and return the results.
    ``peak``: the machine's float32 multiply-add peak (``fma_peak``), GFLOP/s; each row's rate
    is shown as a share of it."""
    from .report import aligned, trailer

    results, skipped = [], {}
    with tempfile.TemporaryDirectory(prefix="gpukb-bench-backward-") as folder:
        points = []
        for workload in workloads:
            for size in sizes:
                path = os.path.join(folder, f"{workload}-{size.key}.npy")
                np.save(path, reference(workload, problem(workload, size)))
                points.append({"workload": workload, "size": size.as_dict(), "reference": path})
        for key in implementations:
            spec = json.dumps({"key": key, "points": points, "repeats": repeats,
                               "budget": budget})
            done = subprocess.run([sys.executable, "-m", "gpukb.bench.backward", "--worker", spec],
                                  capture_output=True, text=True)
            rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
            if not rows:
                rows = [{"workload": p["workload"], "size": p["size"], "key": key,
                         "status": "error", "error": f"worker exited {done.returncode}: "
                                                     f"{done.stderr.strip()[-300:]}"}
                        for p in points]
            for row in rows:
                if row["status"] == "skipped":
                    skipped[key] = row["error"]
                else:
                    results.append(_result(row))
    add_ratios(results)
    results.sort(key=lambda r: (r.workload, r.size.B, r.size.T, r.kind != "gpukb"))
    rows = [(r.workload, r.size.label, r.implementation,
             f"{r.median_s * 1e3:.3f}" if r.status == "ok" and r.median_s is not None else r.status,
             f"{r.gflops:.2f}" if r.status == "ok" else "",
             f"{100 * r.gflops / peak:.0f}%" if r.gflops is not None and peak else "",
             "" if r.ratio_to_fastest_peer is None else f"{r.ratio_to_fastest_peer:.2f}x",
             f"{r.relative_error:.1e}" if r.status == "ok" else "") for r in results]
    columns = ("workload", "size", "implementation", "median ms", "GFLOP/s", "of FMA peak",
               "vs fastest peer", "rel. error")
    lines = aligned(columns, results, rows, numeric={3, 4, 5, 6, 7})
    if peak:
        lines.append(f"FMA peak: {peak:.0f} GFLOP/s float32 (python -m gpukb.bench.fma_peak: "
                     "register-only multiply-adds on the kernels' threads at once; no kernel "
                     "can run faster)")
    lines += [f"error: {r.implementation}, {r.workload} {r.size.label}: {r.error}"
              for r in results if r.status == "error"]
    print("\n".join(lines + trailer(sorted(skipped.items()), None, LEGEND)), file=stream)
    return results


SCHEMA = "gpukb-bench-backward/1"

#: Options of other modes, refused with --backward: (option, how to tell it was given).
_REFUSED = (("--model", lambda a: a.model is not None), ("--grid", lambda a: bool(a.grid)),
            ("--generic", lambda a: bool(a.generic)), ("--plot", lambda a: a.plot is not None),
            ("--peers", lambda a: a.peers is not None),
            ("--backends", lambda a: a.backends is not None),
            ("--dtypes", lambda a: a.dtypes is not None),
            ("--rounds", lambda a: a.rounds is not None))


def command(args, parser) -> int:
    """``gpukb bench --backward``: every argument checked before anything runs; ``--sizes``,
    ``--workloads`` (lstm, gru), ``--repeats``, ``--budget``, ``--quick`` and ``--json`` apply."""
    from . import command as bench_command
    from . import report

    for option, given in _REFUSED:
        if given(args):
            parser.error(f"{option} does not apply with --backward (it times gpukb's cpu "
                         "backend against torch and jax, float32, forward + backward).")
    bench_command.refuse_options(args, parser, bench_command.MODEL_ONLY,
                                 "only applies with --model")
    bench_command.refuse_options(args, parser, bench_command.GRID_ONLY[:2],
                                 "only applies with --grid")
    settings = bench_command.common_settings(args, parser)
    chosen = bench_command._list(args.workloads, WORKLOADS, "workloads", parser)
    if chosen == []:
        parser.error(f"--workloads: give at least one of {', '.join(WORKLOADS)}.")
    if args.sizes:
        try:
            sizes = tuple(Size.parse(text) for text in args.sizes)
        except ValueError as error:
            parser.error(f"--sizes: {error}")
    else:
        sizes = QUICK_SIZES if args.quick else FULL_SIZES
    workloads = tuple(chosen) if chosen else WORKLOADS
    from .fma_peak import fma_gflops

    peak = fma_gflops("float32", seconds=0.5)   # measured before the workers, none running
    results = run(sizes, workloads, repeats=settings["repeats"], budget=settings["budget"],
                  peak=peak)
    if settings["json"] is not None:
        recorded = {"mode": "backward", "sizes": [s.as_dict() for s in sizes],
                    "workloads": list(workloads), "repeats": settings["repeats"],
                    "budget_s": settings["budget"], "fma_peak_gflops_float32": peak}
        report.write_json(settings["json"], report.document(
            results, machine=report.machine_info(), settings=recorded, schema=SCHEMA))
        print(f"saved {settings['json']}", file=sys.stderr)
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 2 and argv[0] == "--worker":
        worker(json.loads(argv[1]))
        return 0
    run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
