"""``gpukb bench --grid``: LSTM, GRU and SimpleRNN, float32 and float64, over a grid of batch
sizes x units, against every installed peer; the data as JSON, the heat map (``heatmap``) as
Markdown and, with matplotlib, a PNG.

- **The grid**: B in ``BATCHES`` x H in ``UNITS``, D = H/2, and T from a FLOP target so that a
  call is long enough to time (``steps``): ``T = clamp(round(TARGET_FLOPS / (B * step_flops)),
  MIN_STEPS, MAX_STEPS)``, ``step_flops = 2*(D+H)*gates*H`` for one sample and one step (gates:
  LSTM 4, GRU 3, SimpleRNN 1), so every workload gets its own T.
- **One worker process per implementation** runs all of that implementation's points (process
  start, imports and compilation are paid once), each point within a small time budget; with
  ``--rounds N`` every implementation runs N times, the rounds interleaved (gpukb, the peers,
  gpukb again, ...), and each point keeps its best round (the machine's noise only slows calls
  down). A peer without a kernel for a dtype is "n/a" with the reason, never run in another type.
  A worker that dies on a point leaves an error row there, and a new one goes on from the next.
- **Outputs are checked** against the float64 NumPy reference over the first ``CHECK_ROWS``
  samples (samples are independent; the whole batch would cost more than the timing at B=256).
- **The machine's GEMM peak**: NumPy float32/float64 ``GEMM_N`` x ``GEMM_N`` matrix products in
  a process of their own, with as many BLAS threads as gpukb's Numba uses, before and after the
  workers; the best of both is the peak each point's GFLOP/s is compared with.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass

from .workloads import DTYPES, GATES, WORKLOADS, Size

SCHEMA = "gpukb-bench-grid/1"
BATCHES = (1, 4, 8, 32, 64, 256)
UNITS = (32, 64, 128, 256, 512, 1024)
#: ``--grid --quick``: a 3 x 3 corner-and-middle grid, float32 only.
QUICK_BATCHES, QUICK_UNITS, QUICK_DTYPES = (1, 8, 64), (64, 256, 1024), ("float32",)
#: FLOPs of one call the T rule aims at: a few ms at the tens of GFLOP/s a 2-core machine gives.
TARGET_FLOPS = 2e8
MIN_STEPS, MAX_STEPS = 20, 1000
#: Seconds of timed calls per point (and implementation, and round); up to ``REPEATS`` calls.
BUDGET_S, QUICK_BUDGET_S, REPEATS = 0.4, 0.3, 30
CHECK_ROWS = 8
#: The GEMM peak's matrix size and how long each dtype is measured (best call).
GEMM_N, GEMM_SECONDS = 1024, 0.5
#: The T rule as the JSON and the README state it.
STEPS_RULE = (f"T = clamp(round({TARGET_FLOPS:.0e} / (B * 2*(D+H)*gates*H)), {MIN_STEPS}, "
              f"{MAX_STEPS}), D = H/2, gates: LSTM 4, GRU 3, SimpleRNN 1")


def steps(workload: str, batch: int, units: int) -> int:
    """T for one grid point: the time steps that bring a call to ``TARGET_FLOPS``, within
    [``MIN_STEPS``, ``MAX_STEPS``]."""
    step_flops = 2 * (units // 2 + units) * GATES[workload] * units
    return int(min(max(round(TARGET_FLOPS / (batch * step_flops)), MIN_STEPS), MAX_STEPS))


@dataclass(frozen=True)
class Point:
    """One problem of the grid."""

    workload: str
    dtype: str
    size: Size

    def as_wire(self) -> dict:
        return {"workload": self.workload, "dtype": self.dtype, "size": self.size.as_dict()}


def plan(workloads=WORKLOADS, dtypes=DTYPES, batches=BATCHES, units=UNITS) -> list[Point]:
    """Every point, workload by workload, dtype by dtype, then B, then H."""
    for name, values in (("batches", batches), ("units", units)):
        if not values or any(not isinstance(v, int) or isinstance(v, bool) or v < 1
                             for v in values):
            raise ValueError(f"{name} must be positive integers, got {list(values)!r}.")
    odd = [h for h in units if h % 2]
    if odd:
        raise ValueError(f"units must be even (D = H/2), got {odd}.")
    return [Point(w, d, Size(b, steps(w, b, h), h // 2, h))
            for w in workloads for d in dtypes for b in batches for h in units]


# --------------------------------------------------------------------------------------------
# The machine's GEMM peak
# --------------------------------------------------------------------------------------------

def gemm_gflops(dtype: str, n: int = GEMM_N, seconds: float = GEMM_SECONDS) -> float:
    """The best GFLOP/s of NumPy's ``n x n`` matrix product in ``dtype`` over ``seconds``."""
    import numpy as np

    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((n, n)).astype(dtype) for _ in range(2))
    out = np.empty((n, n), dtype)
    np.matmul(a, b, out=out)  # warm-up: BLAS threads start, pages touched
    best, deadline = float("inf"), time.perf_counter() + seconds
    while True:
        t0 = time.perf_counter()
        np.matmul(a, b, out=out)
        t1 = time.perf_counter()
        best = min(best, t1 - t0)
        if t1 >= deadline:
            break
    return 2 * n ** 3 / best / 1e9


def gpukb_threads() -> int:
    """The threads gpukb's CPU kernels use: Numba's (``NUMBA_NUM_THREADS``, default all cores)."""
    import numba

    return int(getattr(numba.config, "NUMBA_NUM_THREADS"))  # set from the environment


def measure_gemm_peak(dtypes=DTYPES, *, threads: int, python: str | None = None) -> dict:
    """``{dtype: GFLOP/s}`` measured in a fresh process whose BLAS has ``threads`` threads (a
    BLAS pool spinning in this process would slow the workers down)."""
    env = dict(os.environ)
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[name] = str(threads)
    code = ("import json; from gpukb.bench.grid import gemm_gflops; print(json.dumps({d: "
            f"gemm_gflops(d, {GEMM_N}, {GEMM_SECONDS}) for d in {list(dtypes)!r}}}))")
    import tempfile

    done = subprocess.run([python or sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, cwd=tempfile.gettempdir(), timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"the GEMM peak measurement failed: {done.stderr.strip()[-300:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------

def best_of_rounds(rounds: list[list]) -> list:
    """One result per (implementation, point): the round with the lowest median among those
    that ran (else the first round's, an error or n/a), with every round's median kept in
    ``round_medians_s``."""
    by_point: dict = {}
    for results in rounds:
        for r in results:
            by_point.setdefault((r.key, r.workload, r.dtype, r.size), []).append(r)
    best = []
    for tries in by_point.values():
        ran = [r for r in tries if r.status == "ok"]
        chosen = min(ran, key=lambda r: r.median_s) if ran else tries[0]
        chosen.round_medians_s = [r.median_s for r in tries]
        best.append(chosen)
    return best


class _Share:
    """The progress bar as one implementation's workers see it: at most ``steps`` advances, so
    a worker restarted after a crash does not count the points twice."""

    def __init__(self, progress, steps: int):
        self.progress, self.left = progress, steps

    def show(self, label: str) -> None:
        self.progress.show(label)

    def advance(self, steps: int = 1) -> None:
        steps = max(0, min(steps, self.left))
        self.left -= steps
        self.progress.advance(steps)


def run_implementation(key: str, points, spec: dict, *, progress=None, python=None):
    """All of one implementation's points in one worker process; when the worker dies on a
    point (an error row), a new worker goes on with the points after it. Returns (results,
    ready records, skipped)."""
    from . import runner

    remaining = list(points)
    results: list = []
    ready: list = []
    share = _Share(progress, len(points)) if progress is not None else None
    while remaining:
        found, ready_now, skipped = runner.run_workers(
            [key], dict(spec, points=[p.as_wire() for p in remaining]), per_key=len(remaining),
            from_wire=runner.result_from_wire, crashed=runner.crashed_result, progress=share,
            python=python)
        results += found
        ready = ready or ready_now
        if skipped:
            return results, ready, skipped
        crashed = bool(found) and found[-1].error.startswith("worker process exited")
        if not crashed:
            break  # the worker finished: points it left out are workloads it does not have
        done = {(r.workload, r.dtype, r.size) for r in found}
        remaining = [p for p in remaining if (p.workload, p.dtype, p.size) not in done]
    if share is not None:
        share.advance(share.left)
    return results, ready, []


def run_grid(keys, points, *, repeats: int, budget_s: float, rounds: int = 1, progress=None,
             python: str | None = None):
    """Run every implementation (by key) on every point, ``rounds`` times, the rounds
    interleaved; returns (results, best round per point, in plan order; the prepared
    implementations; skipped as (key, reason))."""
    import tempfile

    from . import runner

    with tempfile.TemporaryDirectory(prefix="gpukb-grid-") as folder:
        runner.write_references([p.as_wire() for p in points], folder, CHECK_ROWS)
        spec = {"check_rows": CHECK_ROWS, "repeats": repeats, "budget_s": budget_s,
                "references": folder}
        all_rounds, ready, skipped = _rounds(keys, points, spec, rounds, progress, python)
    results = best_of_rounds(all_rounds)
    order_p = {(p.workload, p.dtype, p.size): i for i, p in enumerate(points)}
    order_k = {k: i for i, k in enumerate(keys)}
    results.sort(key=lambda r: (order_p[r.workload, r.dtype, r.size], order_k[r.key]))
    runner.add_ratios(results)
    return results, list(ready.values()), list(skipped.items())


def _rounds(keys, points, spec, rounds, progress, python):
    """``rounds`` runs of every implementation over the points: (results per round, ready
    implementations by key, skipped reasons by key)."""
    all_rounds: list[list] = []
    ready: dict = {}
    skipped: dict = {}
    for _ in range(rounds):
        results: list = []
        for key in keys:
            if key in skipped:
                continue
            found, ready_now, skipped_now = run_implementation(key, points, spec,
                                                               progress=progress, python=python)
            results += found
            for implementation in ready_now:
                ready.setdefault(implementation.key, implementation)
            for name, reason in skipped_now:
                skipped.setdefault(name, reason)
        all_rounds.append(results)
    return all_rounds, ready, skipped


def result_entry(r, peak: dict) -> dict:
    """One result as the grid JSON stores it: ``report.result_dict`` plus every round's median
    and the GFLOP/s as a fraction of the machine's GEMM peak in the same dtype."""
    from .report import result_dict

    entry = result_dict(r)
    entry["round_medians_ms"] = [None if m is None else m * 1e3
                                 for m in getattr(r, "round_medians_s", [r.median_s])]
    gflops, top = r.gflops, peak.get(r.dtype)
    entry["fraction_of_gemm_peak"] = gflops / top if gflops is not None and top else None
    return entry


def document(results, *, machine, settings, gemm, implementations, skipped) -> dict:
    """The grid's JSON document, the heat maps' data included (``heatmap.cells``)."""
    from . import heatmap, report

    doc = report.document([], machine=machine, settings=settings,
                          implementations=implementations, skipped=skipped, schema=SCHEMA)
    doc["gemm_peak"] = gemm
    doc["results"] = [result_entry(r, gemm["gflops"]) for r in results]
    doc["heatmaps"] = heatmap.cells(doc)
    return doc


# --------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------

def _numbers(text: str | None, default, option: str, parser) -> tuple[int, ...]:
    if text is None:
        return tuple(default)
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        parser.error(f"{option}: give comma-separated positive integers, got {text!r}.")
    return tuple(dict.fromkeys(values))


def validate(args, parser) -> dict:
    """``gpukb bench --grid``'s settings, every argument checked before anything runs."""
    from . import command, peers

    command.refuse_options(args, parser, (("--sizes", "sizes"),),
                           "does not apply with --grid (the grid chooses the sizes; restrict it "
                           "with --batches and --units)")
    command.refuse_options(args, parser, command.MODEL_ONLY, "only applies with --model")
    settings = command.common_settings(args, parser)
    if args.budget is None:
        settings["budget"] = QUICK_BUDGET_S if args.quick else BUDGET_S
    if args.repeats is None:
        settings["repeats"] = REPEATS
    for option, known, default in (("workloads", WORKLOADS, WORKLOADS),
                                   ("dtypes", DTYPES, QUICK_DTYPES if args.quick else DTYPES)):
        chosen = command._list(getattr(args, option), known, option, parser)
        if chosen == []:
            parser.error(f"--{option}: give at least one of {', '.join(known)}.")
        settings[option] = list(default) if chosen is None else chosen
    settings["batches"] = _numbers(args.batches, QUICK_BATCHES if args.quick else BATCHES,
                                   "--batches", parser)
    units = _numbers(args.units, QUICK_UNITS if args.quick else UNITS, "--units", parser)
    odd = [h for h in units if h % 2]
    if odd:
        parser.error(f"--units: the grid's D is H/2, so H must be even; got "
                     f"{', '.join(map(str, odd))}.")
    settings["units"] = units
    if args.rounds is not None and args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}.")
    settings["rounds"] = args.rounds or 1
    names = command._list(args.peers, peers.PEER_NAMES, "peers", parser)
    settings["peers"] = list(peers.PEER_NAMES) if names is None else names
    if settings["backends"] == [] and settings["peers"] == []:
        parser.error("--backends none with --peers none leaves nothing to run.")
    settings["plot"] = command.plot_path(args, parser)
    return settings


def run(args, parser) -> int:
    from . import command, heatmap, peers, report, runner

    settings = validate(args, parser)
    points = plan(settings["workloads"], settings["dtypes"], settings["batches"],
                  settings["units"])
    keys, left_out = command.gpukb_keys(settings)
    keys += peers.peer_keys(settings["peers"])
    threads = gpukb_threads()
    started = time.perf_counter()
    before = measure_gemm_peak(settings["dtypes"], threads=threads)
    progress = runner.ProgressBar(len(keys) * len(points) * settings["rounds"],
                                  enabled=not args.no_progress)
    results, ready, skipped = run_grid(keys, points, repeats=settings["repeats"],
                                       budget_s=settings["budget"], rounds=settings["rounds"],
                                       progress=progress)
    progress.close()
    after = measure_gemm_peak(settings["dtypes"], threads=threads)
    gemm = {"n": GEMM_N, "seconds": GEMM_SECONDS, "threads": threads, "library": "NumPy matmul",
            "gflops": {d: max(before[d], after[d]) for d in settings["dtypes"]},
            "before": before, "after": after}
    recorded = {"mode": "grid quick" if args.quick else "grid", "workloads": settings["workloads"],
                "dtypes": settings["dtypes"], "batches": list(settings["batches"]),
                "units": list(settings["units"]), "steps_rule": STEPS_RULE,
                "target_flops": TARGET_FLOPS, "check_rows": CHECK_ROWS,
                "repeats": settings["repeats"], "budget_s": settings["budget"],
                "rounds": settings["rounds"], "peers": settings["peers"],
                "backends": settings["backends"],
                "wall_s": round(time.perf_counter() - started, 1)}
    machine = report.machine_info(ready)
    doc = document(results, machine=machine, settings=recorded, gemm=gemm,
                   implementations=ready, skipped=skipped + left_out)
    print(heatmap.markdown(doc))
    if settings["json"] is not None:
        report.write_json(settings["json"], doc)
        print(f"saved {settings['json']}", file=sys.stderr)
    if settings["plot"] is not None:
        try:
            heatmap.plot(doc, settings["plot"])
        except ValueError as error:
            print(f"gpukb bench: no plot: {error}", file=sys.stderr)
            return 1
        print(f"saved {settings['plot']}", file=sys.stderr)
    print(f"gpukb bench --grid: {len(points)} points x {len(ready)} implementation(s) x "
          f"{settings['rounds']} round(s) in {recorded['wall_s']:.0f} s", file=sys.stderr)
    return command.failed_gpukb(results)
