"""``gpukb bench --masks``: what a mask costs gpukb's fused CPU kernels (the goal of issues 12
and 14: a mask of any kind costs at most 10% over the unmasked call).

- **What runs**: ``gpukb.rnn`` of LSTM, GRU and SimpleRNN cells (``forward``) with each mask kind
  of ``FORWARD_KINDS``, and ``gpukb.rnn_vjp`` plus its pullback (``forward+backward``, the
  gradient of ``sum(outputs * dy)``) of LSTM and GRU with ``VJP_KINDS``; float32, the cpu backend.
  Every kind gets the same inputs, weights and ``dy`` (``workloads.make_problem``, one seed).
- **Mask kinds**: ``right``: per-sample lengths uniform in [T/2, T], then padding; ``left``: the
  same lengths, padding first; ``random``: each step valid with probability 0.8, any pattern.
- **Timing**: one group is one workload, size and mode; its kinds are timed call by call in
  turn (none, right, left, random, none, ...), so load from other processes hits every kind
  alike; each kind's first two calls are not timed. ``--rounds N`` runs the whole plan N times,
  each round in a fresh worker process (``python -m gpukb.bench.masks --worker``) with the
  kinds' order rotated, and keeps each kind's best round median. The ratio of a row is its
  median over the unmasked row's in the same group.
- **Checked**: in the first round, each kind's first result against a float64 reference: the
  forward outputs against a plain NumPy loop with Keras's masking rule (first ``CHECK_ROWS``
  samples), the gradients (inputs and every weight) against gpukb's generic path in float64 (no
  fused kernel). A result off by more than ``TOLERANCE`` is "wrong": it gets no ratio and the
  command exits 1, so a wrong fast path cannot report a good ratio. The path gpukb planned for
  each kind (``gpukb._plan``) is reported too: a masked call that fell back to the generic loop
  shows it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from .workloads import FULL_SIZES as _BENCH_SIZES
from .workloads import QUICK_SIZES, WORKLOADS, Size, make_problem

SCHEMA = "gpukb-bench-masks/1"
#: The sizes of ``gpukb bench`` plus the small-batch, wide one of issue 12's table.
FULL_SIZES = _BENCH_SIZES + (Size(8, 200, 32, 256),)
FORWARD_KINDS = ("none", "right", "left", "random")
VJP_KINDS = ("none", "random")
VJP_WORKLOADS = ("lstm", "gru")
MODES = ("forward", "forward+backward")
#: ``random`` masks: the probability that a step is valid.
VALID_PROBABILITY = 0.8
#: The goal: masked median / unmasked median at most this.
GOAL = 1.10
#: Largest relative error (against float64) of a result that counts as right.
TOLERANCE = 1e-4
ROUNDS = 3
CHECK_ROWS = 8
SEED = 0
LEGEND = (
    "mask: right = per-sample lengths uniform in [T/2, T], then padding; left = the same lengths, "
    f"padding first; random = each step valid with probability {VALID_PROBABILITY}; valid: the "
    "fraction of valid (sample, step) pairs. median ms: the best round's median wall time of one "
    "call (forward: gpukb.rnn; forward+backward: gpukb.rnn_vjp and its pullback), the kinds timed "
    "call by call in turn. vs none: median / the unmasked median of the same workload, size and "
    f"mode; goal: at most {GOAL:.2f}x. rel. error: against a float64 reference (forward: NumPy "
    "loop with Keras's masking, first "
    f"{CHECK_ROWS} samples; gradients: gpukb's generic path), the largest over the outputs or "
    f"gradients; above {TOLERANCE:g} the row is wrong and gets no ratio. path: what gpukb ran.")


# --------------------------------------------------------------------------------------------
# Masks and references
# --------------------------------------------------------------------------------------------

def make_mask(kind: str, batch: int, steps: int, seed: int = SEED) -> np.ndarray | None:
    """A ``(B, T)`` bool mask of ``kind`` (None for ``"none"``); right and left padding share
    their lengths, uniform in [ceil(T/2), T]."""
    if kind == "none":
        return None
    rng = np.random.default_rng(seed + 1)
    lengths = rng.integers((steps + 1) // 2, steps + 1, size=batch)
    times = np.arange(steps)[None, :]
    if kind == "right":
        return times < lengths[:, None]
    if kind == "left":
        return times >= (steps - lengths)[:, None]
    if kind == "random":
        return rng.random((batch, steps)) < VALID_PROBABILITY
    raise ValueError(f"unknown mask kind {kind!r}; known: {', '.join(FORWARD_KINDS)}.")


def valid_fraction(kind: str, size: Size) -> float:
    """The fraction of valid (sample, step) pairs in ``make_mask(kind, B, T)``."""
    mask = make_mask(kind, size.B, size.T)
    return 1.0 if mask is None else float(mask.mean())


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def masked_reference(workload: str, x, kernel, recurrent_kernel, bias, mask) -> np.ndarray:
    """Every step's output ``(B, T, H)`` in float64 from zero initial states, with Keras's
    masking (docs/semantics.md): at a masked step every state keeps its value and the output
    repeats the previous step's (zeros before the first valid step). The cell math is
    ``workloads.reference``'s."""
    f64 = np.float64
    W, U, b = (np.asarray(a, f64) for a in (kernel, recurrent_kernel, bias))
    B, T = x.shape[:2]
    H = U.shape[0]
    xw = np.asarray(x, f64) @ W
    valid = np.ones((B, T), bool) if mask is None else np.asarray(mask, bool)
    h, c, out = np.zeros((B, H)), np.zeros((B, H)), np.zeros((B, H))
    outputs = np.empty((B, T, H))
    for t in range(T):
        if workload == "lstm":
            z = xw[:, t] + h @ U + b
            i, f = _sigmoid(z[:, :H]), _sigmoid(z[:, H:2 * H])
            g, o = np.tanh(z[:, 2 * H:3 * H]), _sigmoid(z[:, 3 * H:])
            new_c = f * c + i * g
            new_h = o * np.tanh(new_c)
        elif workload == "gru":  # reset_after=True: bias rows are (input, recurrent)
            mx, mh = xw[:, t] + b[0], h @ U + b[1]
            z = _sigmoid(mx[:, :H] + mh[:, :H])
            r = _sigmoid(mx[:, H:2 * H] + mh[:, H:2 * H])
            new_h = z * h + (1.0 - z) * np.tanh(mx[:, 2 * H:] + r * mh[:, 2 * H:])
            new_c = c
        elif workload == "simple_rnn":
            new_h, new_c = np.tanh(xw[:, t] + b + h @ U), c
        else:
            raise ValueError(f"unknown workload {workload!r}; known: {', '.join(WORKLOADS)}.")
        keep = valid[:, t, None]
        h, c, out = np.where(keep, new_h, h), np.where(keep, new_c, c), np.where(keep, new_h, out)
        outputs[:, t] = out
    return outputs


def _grad_arrays(grads) -> dict:
    return {"inputs": np.asarray(grads.inputs), **{k: np.asarray(v)
                                                   for k, v in grads.weights.items()}}


def vjp_reference(problem, mask, dy) -> dict:
    """The gradients (inputs and every weight) of ``sum(outputs * dy)`` in float64 on gpukb's
    generic path, which runs the cells' step derivatives in NumPy, no fused kernel."""
    import gpukb
    from gpukb._backend import Backend
    from gpukb._plan import GENERIC, Plan

    factories: dict[str, Callable[..., Any]] = {
        "lstm": gpukb.cells.lstm, "gru": gpukb.cells.gru, "simple_rnn": gpukb.cells.simple_rnn}
    factory = factories[problem.workload]
    cell = factory(*(w.astype(np.float64) for w in problem.weights))  # the float32 values
    x = problem.x.astype(np.float64)
    states = [s.astype(np.float64) for s in problem.states]
    backend = gpukb.get_backend("cpu")
    call = backend.prepare(cell, x, states, mask=mask)
    _, pullback = Backend.run_vjp_plan(backend, Plan("cpu", GENERIC, "reference"), call,
                                       (x, states))
    return _grad_arrays(pullback(np.asarray(dy, np.float64)))


def relative_error(found: np.ndarray, ref: np.ndarray) -> float:
    found = np.asarray(found, np.float64)
    if found.shape != ref.shape:
        raise ValueError(f"result has shape {found.shape}, the reference {ref.shape}.")
    scale = float(np.linalg.norm(ref))
    return float(np.linalg.norm(found - ref) / (scale if scale else 1.0))


# --------------------------------------------------------------------------------------------
# One group: the mask kinds of one workload, size and mode
# --------------------------------------------------------------------------------------------

@dataclass
class Row:
    """One mask kind of one group, as measured (one round) or combined (the best round)."""

    mode: str
    workload: str
    size: Size
    mask: str
    valid: float                  # fraction of valid (sample, step) pairs
    status: str = "ok"            # "ok", "wrong" (failed the check) or "error"
    error: str = ""
    median_s: float | None = None
    min_s: float | None = None
    repeats: int = 0
    first_call_s: float | None = None
    relative_error: float | None = None   # None: not checked in this round
    path: str = ""
    round_medians_s: list = field(default_factory=list)
    ratio_to_none: float | None = None

    @property
    def group(self) -> tuple:
        return (self.mode, self.workload, self.size)

    @property
    def meets_goal(self) -> bool | None:
        return None if self.ratio_to_none is None else self.ratio_to_none <= GOAL

    def to_wire(self) -> dict:
        data = {name: getattr(self, name) for name in Row.__dataclass_fields__}
        data["size"] = self.size.as_dict()
        return data

    @classmethod
    def from_wire(cls, data: dict) -> "Row":
        return cls(**dict(data, size=Size(**data["size"])))


def plan_groups(workloads, sizes) -> list[tuple[str, str, Size]]:
    """(mode, workload, size) of every group, size by size: each workload's forward, then the
    forward+backward of those that have fused backward kernels benchmarked here."""
    groups = []
    for size in sizes:
        groups += [("forward", w, size) for w in workloads]
        groups += [("forward+backward", w, size) for w in workloads if w in VJP_WORKLOADS]
    return groups


def _runs(mode: str, problem, masks: dict, dy):
    """``{kind: run}``, each ``run()`` returning what the check compares: the outputs
    (forward) or the gradients (forward+backward)."""
    import gpukb

    cell, x, states = problem.cell(), problem.x, problem.states

    def forward(mask):
        return lambda: gpukb.rnn(cell, x, states, mask=mask, backend="cpu")[1]

    def forward_backward(mask):
        def run():
            _, pullback = gpukb.rnn_vjp(cell, x, states, mask=mask, backend="cpu")
            return _grad_arrays(pullback(dy))
        return run

    make = forward if mode == "forward" else forward_backward
    return {kind: make(mask) for kind, mask in masks.items()}


def _check(mode: str, problem, mask, dy, found) -> float:
    if mode == "forward":
        rows = slice(CHECK_ROWS)
        kernel, recurrent_kernel, bias = problem.weights
        outputs = masked_reference(problem.workload, problem.x[rows], kernel, recurrent_kernel,
                                   bias, None if mask is None else mask[rows])
        return relative_error(np.asarray(found)[rows], outputs)
    grads = vjp_reference(problem, mask, dy)
    return max(relative_error(found[name], grads[name]) for name in grads)


def interleaved_times(runs: dict, *, repeats: int, budget_s: float,
                      clock=time.perf_counter) -> dict:
    """``{kind: [seconds, ...]}``: one timed call of each run in turn, up to ``repeats`` turns,
    stopping once ``budget_s`` seconds per run have passed (at least one turn always runs)."""
    times: dict = {kind: [] for kind in runs}
    deadline = clock() + budget_s * len(runs)
    for _ in range(repeats):
        for kind, run in runs.items():
            t0 = clock()
            run()
            times[kind].append(clock() - t0)
        if clock() >= deadline:
            break
    return times


def measure_group(mode: str, workload: str, size: Size, *, repeats: int, budget_s: float,
                  check: bool, rotate: int = 0, clock=time.perf_counter) -> list[Row]:
    """One group's rows (in ``FORWARD_KINDS``/``VJP_KINDS`` order): each kind called twice
    untimed (the first checked when ``check``), then timed in turn, the order rotated by
    ``rotate``. An exception makes every row of the group an error row."""
    from gpukb._plan import recorded_plans

    kinds = FORWARD_KINDS if mode == "forward" else VJP_KINDS
    rows = {k: Row(mode, workload, size, k, valid_fraction(k, size)) for k in kinds}
    try:
        problem = make_problem(workload, size, seed=SEED)
        masks = {k: make_mask(k, size.B, size.T) for k in kinds}
        dy = np.random.default_rng(SEED + 2).standard_normal((size.B, size.T, size.H)) \
            .astype(np.float32)
        runs = _runs(mode, problem, masks, dy)
        for kind, run in runs.items():
            row = rows[kind]
            with recorded_plans() as plans:
                start = clock()
                found = run()
                row.first_call_s = clock() - start
            row.path = plans[0].path if plans else "?"
            run()
            if check:
                row.relative_error = _check(mode, problem, masks[kind], dy, found)
                if not row.relative_error <= TOLERANCE:
                    row.status = "wrong"
        order = list(kinds[rotate % len(kinds):] + kinds[:rotate % len(kinds)])
        times = interleaved_times({k: runs[k] for k in order}, repeats=repeats,
                                  budget_s=budget_s, clock=clock)
    except Exception as error:  # noqa: BLE001 - reported in the table; the run goes on
        why = f"{type(error).__name__}: {error}".splitlines()[0][:200]
        for row in rows.values():
            row.status, row.error = "error", why
        return list(rows.values())
    for kind, row in rows.items():
        row.median_s = float(np.median(times[kind]))
        row.min_s, row.repeats = min(times[kind]), len(times[kind])
    return list(rows.values())


# --------------------------------------------------------------------------------------------
# Rounds: one worker process each; their best medians; the ratios
# --------------------------------------------------------------------------------------------

def worker(spec: dict, emit) -> None:
    """One round: every group of the spec, one ``result`` event per group."""
    from .implementations import GpukbBackend

    gpukb_cpu = GpukbBackend("cpu")
    gpukb_cpu.prepare()
    emit({"event": "ready", "threads": gpukb_cpu.threads, "versions": gpukb_cpu.versions})
    for mode, workload, size in plan_groups(spec["workloads"],
                                            [Size(**s) for s in spec["sizes"]]):
        emit({"event": "start", "title": f"round {spec['round'] + 1}: {workload} {mode} "
                                         f"{size.label}"})
        rows = measure_group(mode, workload, size, repeats=spec["repeats"],
                             budget_s=spec["budget_s"], check=spec["check"],
                             rotate=spec["round"])
        emit({"event": "result", "rows": [r.to_wire() for r in rows]})
    emit({"event": "done"})


def run_round(spec: dict, *, progress=None, python: str | None = None) -> tuple[list, dict]:
    """One round in a fresh worker process: (its rows, the ready event). Groups the worker did
    not report (it died) come back as error rows with the end of its stderr."""
    from .runner import WORKER_MARK

    rows: list[Row] = []
    ready: dict = {}
    with tempfile.TemporaryFile("w+") as errors:
        # The worker starts in the temporary folder, as gpukb bench's other workers do: "python
        # -m" puts its working folder first on sys.path, which in a source checkout would shadow
        # the installed gpukb.
        process = subprocess.Popen([python or sys.executable, "-m", "gpukb.bench.masks",
                                    "--worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   stderr=errors, text=True, cwd=tempfile.gettempdir())
        assert process.stdin is not None and process.stdout is not None  # both PIPEs
        try:
            process.stdin.write(json.dumps(spec))
            process.stdin.close()
        except BrokenPipeError:  # it died at once: its stderr says why, below
            pass
        for line in process.stdout:
            if not line.startswith(WORKER_MARK):
                continue
            event = json.loads(line[len(WORKER_MARK):])
            if event["event"] == "ready":
                ready = event
            elif event["event"] == "start" and progress is not None:
                progress.show(event["title"])
            elif event["event"] == "result":
                rows += [Row.from_wire(r) for r in event["rows"]]
                if progress is not None:
                    progress.advance()
        code = process.wait()
        errors.seek(0)
        tail = " | ".join(errors.read().strip().splitlines()[-3:])[-300:]
    done = {r.group for r in rows}
    for mode, workload, size in plan_groups(spec["workloads"], [Size(**s) for s in spec["sizes"]]):
        if (mode, workload, size) not in done:
            kinds = FORWARD_KINDS if mode == "forward" else VJP_KINDS
            why = f"worker process exited with code {code}" + (f": {tail}" if tail else "")
            rows += [Row(mode, workload, size, k, valid_fraction(k, size), status="error",
                         error=why) for k in kinds]
            if progress is not None:
                progress.advance()
    return rows, ready


def combine(rounds: list[list[Row]]) -> list[Row]:
    """One row per (group, kind): the first round's (checked) row, with the lowest median of the
    rounds in which it ran, every round's median, and its ratio to the group's unmasked row. A
    row that failed the first round's check (or errored there) stays so."""
    by_key: dict = {}
    for rows in rounds:
        for r in rows:
            by_key.setdefault((r.group, r.mask), []).append(r)
    combined = []
    for tries in by_key.values():
        row = tries[0]
        row.round_medians_s = [r.median_s if r.status != "error" else None for r in tries]
        if row.status == "ok":
            ran = [r for r in tries if r.status != "error"]
            best = min(ran, key=lambda r: r.median_s)
            row.median_s, row.min_s, row.repeats = best.median_s, best.min_s, best.repeats
        combined.append(row)
    add_ratios(combined)
    return combined


def add_ratios(rows: list[Row]) -> None:
    """``ratio_to_none`` of every ok row whose group's unmasked row is ok too."""
    unmasked = {r.group: r.median_s for r in rows if r.mask == "none" and r.status == "ok"}
    for r in rows:
        base = unmasked.get(r.group)
        r.ratio_to_none = (r.median_s / base if r.status == "ok" and r.median_s is not None
                           and base else None)


def run_masks(workloads, sizes, *, rounds: int, repeats: int, budget_s: float, progress=None,
              python: str | None = None) -> tuple[list[Row], dict]:
    """Every round in its own worker, the first one checked; (combined rows in plan order, the
    first ready event: threads and versions)."""
    spec = {"workloads": list(workloads), "sizes": [s.as_dict() for s in sizes],
            "repeats": repeats, "budget_s": budget_s}
    all_rounds: list[list[Row]] = []
    ready: dict = {}
    for index in range(rounds):
        rows, ready_now = run_round(dict(spec, round=index, check=index == 0),
                                    progress=progress, python=python)
        all_rounds.append(rows)
        ready = ready or ready_now
    order = {g: i for i, g in enumerate(plan_groups(workloads, sizes))}
    kinds = {k: i for i, k in enumerate(FORWARD_KINDS)}
    rows = sorted(combine(all_rounds), key=lambda r: (MODES.index(r.mode), order[r.group],
                                                      kinds[r.mask]))
    return rows, ready


# --------------------------------------------------------------------------------------------
# Table, JSON and the command
# --------------------------------------------------------------------------------------------

def _table_row(r: Row) -> tuple:
    base = (r.mode, r.workload, r.size.label, r.mask, f"{r.valid:.2f}")
    if r.status == "error" or r.median_s is None:
        return base + ("error", "", "", "", r.path)
    error = "" if r.relative_error is None else f"{r.relative_error:.1e}"
    if r.status == "wrong":
        return base + (f"{r.median_s * 1e3:.3f}", "", "wrong", error, r.path)
    ratio = "" if r.ratio_to_none is None else f"{r.ratio_to_none:.2f}x"
    goal = "" if r.mask == "none" or r.meets_goal is None else ("yes" if r.meets_goal else "NO")
    return base + (f"{r.median_s * 1e3:.3f}", ratio, goal, error, r.path)


class _Grouped:
    """What ``report.aligned`` needs of a row: its group (blank lines between groups)."""

    def __init__(self, row: Row):
        self.group = row.group


def format_table(rows: list[Row]) -> str:
    from .report import aligned

    columns = ("mode", "workload", "size", "mask", "valid", "median ms", "vs none",
               f"goal <= {GOAL:.2f}x", "rel. error", "path")
    lines = aligned(columns, [_Grouped(r) for r in rows], [_table_row(r) for r in rows],
                    numeric={4, 5, 6, 8})
    lines += [f"error: {r.mode} {r.workload} {r.size.label} mask={r.mask}: {r.error}"
              for r in rows if r.status == "error"]
    lines += [f"wrong: {r.mode} {r.workload} {r.size.label} mask={r.mask}: rel. error "
              f"{r.relative_error:.1e} > {TOLERANCE:g}" for r in rows if r.status == "wrong"]
    return "\n".join(lines + [LEGEND])


def row_dict(r: Row) -> dict:
    return {"mode": r.mode, "workload": r.workload, "dtype": "float32", "size": r.size.as_dict(),
            "mask": r.mask, "valid_fraction": r.valid, "status": r.status,
            "error": r.error or None,
            "median_ms": None if r.median_s is None else r.median_s * 1e3,
            "min_ms": None if r.min_s is None else r.min_s * 1e3,
            "first_call_ms": None if r.first_call_s is None else r.first_call_s * 1e3,
            "repeats": r.repeats,
            "round_medians_ms": [None if m is None else m * 1e3 for m in r.round_medians_s],
            "ratio_to_none": r.ratio_to_none, "meets_goal": r.meets_goal,
            "relative_error": r.relative_error, "path": r.path}


def document(rows: list[Row], *, ready: dict, settings: dict) -> dict:
    from .implementations import Implementation
    from .report import document as bench_document
    from .report import machine_info

    implementation = Implementation(key="gpukb[cpu]", kind="gpukb",
                                    threads=ready.get("threads", ""),
                                    versions=ready.get("versions", {}))
    return bench_document(rows, machine=machine_info([implementation]), settings=settings,
                          implementations=[implementation], schema=SCHEMA, as_dict=row_dict)


#: Options of other modes: (option, how to tell it was given).
_OTHER_MODES = (("--model", lambda a: a.model is not None), ("--grid", lambda a: bool(a.grid)),
                ("--generic", lambda a: bool(a.generic)),
                ("--backward", lambda a: bool(a.backward)),
                ("--plot", lambda a: a.plot is not None),
                ("--peers", lambda a: a.peers is not None),
                ("--backends", lambda a: a.backends is not None),
                ("--dtypes", lambda a: a.dtypes is not None))


def validate(args, parser) -> dict:
    """``gpukb bench --masks``'s settings, every argument checked before anything runs."""
    from . import command

    for option, given in _OTHER_MODES:
        if given(args):
            parser.error(f"{option} does not apply with --masks (it times gpukb's cpu backend "
                         "alone, float32, each mask kind against no mask).")
    command.refuse_options(args, parser, command.MODEL_ONLY, "only applies with --model")
    command.refuse_options(args, parser, (("--batches", "batches"), ("--units", "units")),
                           "only applies with --grid")
    settings = command.common_settings(args, parser)
    chosen = command._list(args.workloads, WORKLOADS, "workloads", parser)
    if chosen == []:
        parser.error(f"--workloads: give at least one of {', '.join(WORKLOADS)}.")
    settings["workloads"] = list(WORKLOADS) if chosen is None else chosen
    if args.sizes:
        try:
            settings["sizes"] = [Size.parse(s) for s in args.sizes]
        except ValueError as error:
            parser.error(f"--sizes: {error}")
    else:
        settings["sizes"] = list(QUICK_SIZES if args.quick else FULL_SIZES)
    if args.rounds is not None and args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}.")
    settings["rounds"] = args.rounds or ROUNDS
    return settings


def run(args, parser) -> int:
    from . import report, runner

    settings = validate(args, parser)
    workloads, sizes = settings["workloads"], settings["sizes"]
    progress = runner.ProgressBar(len(plan_groups(workloads, sizes)) * settings["rounds"],
                                  enabled=not args.no_progress)
    started = time.perf_counter()
    rows, ready = run_masks(workloads, sizes, rounds=settings["rounds"],
                            repeats=settings["repeats"], budget_s=settings["budget"],
                            progress=progress)
    progress.close()
    mode = "masks quick" if args.quick else "masks"
    machine = report.machine_info()
    print(report.title(mode, machine))
    print(format_table(rows))
    if ready.get("threads"):
        print(f"threads: gpukb[cpu]: {ready['threads']}")
    if settings["json"] is not None:
        recorded = {"mode": mode, "workloads": workloads,
                    "sizes": [s.as_dict() for s in sizes], "rounds": settings["rounds"],
                    "repeats": settings["repeats"], "budget_s": settings["budget"],
                    "forward_kinds": list(FORWARD_KINDS), "vjp_kinds": list(VJP_KINDS),
                    "vjp_workloads": list(VJP_WORKLOADS),
                    "valid_probability": VALID_PROBABILITY, "goal": GOAL,
                    "tolerance": TOLERANCE, "check_rows": CHECK_ROWS, "seed": SEED,
                    "wall_s": round(time.perf_counter() - started, 1)}
        report.write_json(settings["json"], document(rows, ready=ready, settings=recorded))
        print(f"saved {settings['json']}", file=sys.stderr)
    bad = [r for r in rows if r.status != "ok"]
    if bad:
        print(f"gpukb bench --masks: {len(bad)} row(s) wrong or failed (see the table).",
              file=sys.stderr)
        return 1
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv != ["--worker"]:
        print("python -m gpukb.bench.masks --worker: a worker of 'gpukb bench --masks' "
              "(reads its spec on stdin); run 'gpukb bench --masks' instead.", file=sys.stderr)
        return 2
    from .runner import WORKER_MARK

    def emit(event: dict) -> None:
        sys.stdout.write(WORKER_MARK + json.dumps(event) + "\n")
        sys.stdout.flush()

    worker(json.loads(sys.stdin.read()), emit)
    return 0


if __name__ == "__main__":
    sys.exit(main())
