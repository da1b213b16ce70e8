"""Timing: the first call (compilation, caches) outside the timed region, then the median of
repeated calls within a time budget; and the text progress bar on stderr."""

from __future__ import annotations

import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .workloads import Size


@dataclass
class Timing:
    first_call_s: float          # the untimed warm-up call: compilation, allocation, caches
    times_s: list = field(default_factory=list)

    @property
    def median_s(self) -> float:
        return statistics.median(self.times_s)

    @property
    def min_s(self) -> float:
        return min(self.times_s)


def measure(run, *, repeats: int, budget_s: float, warmups: int = 2, clock=time.perf_counter):
    """Call ``run()`` ``warmups`` times untimed (the first compiles; its duration is kept as
    ``first_call_s``) and then up to ``repeats`` timed times, stopping early once ``budget_s``
    seconds of timed calls have passed (at least one timed call always runs). ``run`` must
    synchronise its device itself. Returns (the first call's result, Timing)."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}.")
    start = clock()
    result = run()
    timing = Timing(first_call_s=clock() - start)
    for _ in range(warmups - 1):
        run()
    deadline = clock() + budget_s
    for _ in range(repeats):
        t0 = clock()
        run()
        t1 = clock()
        timing.times_s.append(t1 - t0)
        if t1 >= deadline:
            break
    return result, timing


class ProgressBar:
    """``[#######.......]  7/18 lstm B=32 ... torch nn.LSTM`` redrawn in place on a terminal; one
    line per step otherwise (logs stay readable); nothing when disabled."""

    def __init__(self, total: int, *, stream=None, enabled: bool = True, width: int = 24):
        self.total = max(int(total), 1)
        self.done = 0
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.width = width
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.started = time.perf_counter()
        self._last_len = 0

    def _line(self, label: str) -> str:
        filled = int(self.width * self.done / self.total)
        bar = "#" * filled + "." * (self.width - filled)
        elapsed = time.perf_counter() - self.started
        digits = len(str(self.total))
        return f"[{bar}] {self.done:{digits}d}/{self.total} {elapsed:5.0f}s {label}"

    def show(self, label: str) -> None:
        """Announce the step about to run."""
        if not self.enabled:
            return
        line = self._line(label)
        if self.tty:
            pad = max(self._last_len - len(line), 0)
            self.stream.write("\r" + line + " " * pad)
            self._last_len = len(line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def advance(self, steps: int = 1) -> None:
        self.done = min(self.done + steps, self.total)

    def close(self) -> None:
        if not self.enabled:
            return
        self.done = self.total
        line = self._line("done")
        if self.tty:
            pad = max(self._last_len - len(line), 0)
            self.stream.write("\r" + line + " " * pad + "\n")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


@dataclass
class Result:
    """One implementation on one problem."""

    workload: str
    size: Size
    implementation: str           # the display label, e.g. "torch nn.LSTM"
    key: str                      # the stable name, e.g. "torch", "gpukb[cpu]"
    kind: str                     # "gpukb" or "peer"
    flops: int
    dtype: str = "float32"        # of the inputs, weights and outputs
    status: str = "ok"            # "ok", "error", or "n/a" (the dtype unsupported: see error)
    error: str = ""
    median_s: float | None = None
    min_s: float | None = None
    repeats: int = 0
    first_call_s: float | None = None
    relative_error: float | None = None
    ratio_to_fastest_peer: float | None = None   # median / the fastest peer's median

    @property
    def group(self) -> tuple:
        """The problem this row measures: rows of one group are compared with each other."""
        return (self.workload, self.dtype, self.size)

    @property
    def gflops(self) -> float | None:
        if self.median_s is None or self.median_s <= 0:
            return None
        return self.flops / self.median_s / 1e9


def run_one(implementation, problem, *, repeats: int, budget_s: float) -> Result:
    """Build, warm up, check against the reference and time one implementation on one problem."""
    result = Result(problem.workload, problem.size, implementation.label(problem.workload),
                    implementation.key, implementation.kind, problem.flops, problem.dtype)
    reason = implementation.unsupported(problem.workload, problem.dtype)
    if reason:
        result.status, result.error = "n/a", reason
        return result

    def check(outputs):
        result.relative_error = problem.relative_error(outputs)

    return timed(result, lambda: implementation.build(problem), check, repeats=repeats,
                 budget_s=budget_s)


def timed(result, build, check, *, repeats: int, budget_s: float):
    """Fill ``result`` (a ``Result`` or a ``models.ModelResult``): ``build()`` a ``Runnable``,
    time it (``measure``), and ``check`` the NumPy form of its first call's outputs. Any exception
    becomes an ``error`` row (one broken peer never stops the run). Returns ``result``."""
    try:
        runnable = build()
        first, timing = measure(runnable.run, repeats=repeats, budget_s=budget_s)
        check(runnable.to_numpy(first))
    except Exception as error:  # noqa: BLE001 - reported in the table
        result.status = "error"
        result.error = f"{type(error).__name__}: {error}".splitlines()[0][:200]
        return result
    result.median_s, result.min_s = timing.median_s, timing.min_s
    result.repeats, result.first_call_s = len(timing.times_s), timing.first_call_s
    return result


def add_ratios(results) -> None:
    """Fill ``ratio_to_fastest_peer`` for every successful row (None where no peer ran); rows
    are compared within their ``group`` (one problem: workload and size, or batch and call)."""
    best: dict = {}
    for r in results:
        if r.kind == "peer" and r.status == "ok":
            best[r.group] = min(best.get(r.group, r.median_s), r.median_s)
    for r in results:
        fastest = best.get(r.group)
        if r.status == "ok" and fastest:
            r.ratio_to_fastest_peer = r.median_s / fastest


def result_to_wire(r: Result) -> dict:
    """A Result as plain JSON data (the worker processes send them to the parent)."""
    data = {name: getattr(r, name) for name in Result.__dataclass_fields__}
    data["size"] = r.size.as_dict()
    return data


def result_from_wire(data: dict) -> Result:
    from .workloads import Size

    data = dict(data)
    data["size"] = Size(**data["size"])
    return Result(**data)


WORKER_MARK = "@@gpukb-bench@@ "


def crashed_result(key: str, started: dict, why: str) -> Result:
    """The error row of the problem a worker died on (its ``start`` event)."""
    from .workloads import Size, flops

    size = Size(**started["size"])
    return Result(started["workload"], size, started["label"], key, started["kind"],
                  flops(started["workload"], size), started.get("dtype", "float32"),
                  status="error", error=why)


def write_references(points, folder: str, check_rows=None) -> None:
    """The float64 reference of every point (``{"workload", "dtype", "size"}``) into ``folder``,
    for the workers to load (``Problem.load_reference``): computed here, before any worker
    starts, so that no worker runs BLAS (and leaves its threads spinning) between timed calls."""
    from .workloads import Size, make_problem

    for point in points:
        problem = make_problem(point["workload"], Size(**point["size"]), dtype=point["dtype"],
                               check_rows=check_rows)
        problem.save_reference(folder)


def run_isolated(keys, workloads, sizes, *, repeats: int, budget_s: float, progress=None,
                 python: str | None = None, dtypes=("float32",)):
    """Run each implementation (by key) in a fresh worker process, one after the other, on every
    workload x dtype x size (see ``run_workers``). Returns (results in table order, the prepared
    implementations as records, skipped as [(key, reason)])."""
    import tempfile

    spec = {"workloads": list(workloads), "sizes": [s.as_dict() for s in sizes],
            "dtypes": list(dtypes), "repeats": repeats, "budget_s": budget_s}
    with tempfile.TemporaryDirectory(prefix="gpukb-bench-") as folder:
        from .worker import workload_points

        write_references(workload_points(spec), folder)
        results, ready, skipped = run_workers(keys, dict(spec, references=folder),
                                              per_key=len(workloads) * len(dtypes) * len(sizes),
                                              from_wire=result_from_wire, crashed=crashed_result,
                                              progress=progress, python=python)
    order_w = {w: i for i, w in enumerate(workloads)}
    order_d = {d: i for i, d in enumerate(dtypes)}
    order_s = {s: i for i, s in enumerate(sizes)}
    order_k = {k: i for i, k in enumerate(keys)}
    results.sort(key=lambda r: (order_w[r.workload], order_d[r.dtype], order_s[r.size],
                                order_k[r.key]))
    add_ratios(results)
    return results, ready, skipped


def run_workers(keys, spec: dict, *, per_key: int, from_wire, crashed, progress=None,
                python: str | None = None):
    """Run each implementation (by key) in a fresh ``gpukb.bench.worker`` process, one after the
    other, handing it ``spec`` (plus its key). Separate processes keep the libraries' thread
    pools (OpenMP, OpenBLAS, XLA, Numba) from competing with each other for the cores, and a
    crashing peer from ending the run. ``per_key``: the results one worker makes (for the
    progress bar); ``from_wire(data)``: a result event's data as a result; ``crashed(key, start
    event, why)``: the error result of the problem a worker died on. Returns (results in run
    order, the prepared implementations as records, skipped as [(key, reason)])."""
    import json
    import subprocess
    import tempfile

    from .implementations import Implementation

    python = python or sys.executable
    results, ready, skipped = [], [], []
    for key in keys:
        finished, started, done = 0, None, False
        if progress is not None:
            progress.show(f"starting {key}")
        with tempfile.TemporaryFile("w+") as errors:
            # The worker starts in the temporary folder: "python -m" puts its working folder
            # first on sys.path, and from a source checkout that would shadow the installed
            # gpukb (whose gpukb.kernels only exists once installed).
            process = subprocess.Popen(
                [python, "-m", "gpukb.bench.worker"], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=errors, text=True, cwd=tempfile.gettempdir(),
            )
            assert process.stdin is not None and process.stdout is not None  # both PIPEs
            process.stdin.write(json.dumps(dict(spec, key=key)))
            process.stdin.close()
            for line in process.stdout:
                if not line.startswith(WORKER_MARK):
                    continue  # a library printing to stdout
                event = json.loads(line[len(WORKER_MARK):])
                kind = event["event"]
                if kind == "skipped":
                    skipped.append((key, event["reason"]))
                elif kind == "ready":
                    ready.append(Implementation(key=key, kind=event["kind"],
                                                threads=event["threads"],
                                                versions=event["versions"]))
                elif kind == "start":
                    started = event
                    if progress is not None:
                        progress.show(event["title"])
                elif kind == "result":
                    results.append(from_wire(event["result"]))
                    started = None
                    finished += 1
                    if progress is not None:
                        progress.advance()
                elif kind == "done":
                    done = True
            code = process.wait()
            if not done:
                errors.flush()
                errors.seek(0)
                why = f"worker process exited with code {code}"
                tail = " | ".join(errors.read().strip().splitlines()[-3:])
                if tail:
                    why += f": {tail[-300:]}"
                if started is not None:
                    results.append(crashed(key, started, why))
                    finished += 1
                else:
                    skipped.append((key, why))
        if progress is not None:
            progress.advance(per_key - finished)
    return results, ready, skipped
