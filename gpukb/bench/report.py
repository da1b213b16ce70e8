"""Presenting results: the text table, the JSON document (with machine information) and the plot."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

SCHEMA = "gpukb-bench/1"
MODEL_SCHEMA = "gpukb-bench-model/1"
COLUMNS = ("workload", "size", "implementation", "median ms", "GFLOP/s", "vs fastest peer",
           "rel. error")
LEGEND = (
    "median ms: median wall time of one forward pass over the whole sequence (two warm-up calls, "
    "the first with compilation, not timed); GFLOP/s: 2*B*T*(D+H)*gates*H / median (gates: LSTM 4, GRU 3); "
    "vs fastest peer: median / the fastest peer's median (below 1.00x: faster than every peer); "
    "rel. error: ||out - ref|| / ||ref|| against a float64 NumPy reference."
)


# --------------------------------------------------------------------------------------------
# Table
# --------------------------------------------------------------------------------------------

def _row(r) -> tuple:
    if r.status == "n/a":  # the reason starts with its short form, e.g. "float32 only: ..."
        return (r.workload, r.size.label, r.implementation, f"n/a ({na_short(r.error)})", "",
                "", "")
    if r.status != "ok":
        return (r.workload, r.size.label, r.implementation, "error", "", "", "")
    ratio = "" if r.ratio_to_fastest_peer is None else f"{r.ratio_to_fastest_peer:.2f}x"
    return (r.workload, r.size.label, r.implementation, f"{r.median_s * 1e3:.3f}",
            f"{r.gflops:.2f}", ratio, f"{r.relative_error:.1e}")


def na_short(reason: str) -> str:
    """``"float32 only"`` from an n/a reason ``"float32 only: why"``."""
    return reason.split(":", 1)[0]


def format_table(results, *, skipped=(), threads=None, legend: bool = True) -> str:
    """The results as an aligned text table, followed by the rows that failed or are n/a (with
    the reason, once per implementation, workload and dtype for n/a), the skipped
    implementations (with the reason), the threads each implementation used, and a legend. A
    dtype column appears when a row is not float32."""
    columns: tuple = COLUMNS
    rows: list[tuple] = [_row(r) for r in results]
    numeric = {3, 4, 5, 6}
    if any(r.dtype != "float32" for r in results):
        columns = columns[:1] + ("dtype",) + columns[1:]
        rows = [row[:1] + (r.dtype,) + row[1:] for r, row in zip(results, rows)]
        numeric = {i + 1 for i in numeric}
    lines = aligned(columns, results, rows, numeric=numeric)
    lines += [f"error: {r.implementation}, {r.workload} {r.size.label}: {r.error}"
              for r in results if r.status == "error"]
    not_run = {(r.implementation, r.workload, r.dtype): r.error
               for r in results if r.status == "n/a"}
    lines += [f"n/a: {name}, {workload} {dtype}: {reason}"
              for (name, workload, dtype), reason in not_run.items()]
    text = LEGEND
    if any(r.workload == "simple_rnn" for r in results):
        text = text.replace("GRU 3)", "GRU 3, SimpleRNN 1)")
    return "\n".join(lines + trailer(skipped, threads, text if legend else None))


def aligned(columns, results, rows, *, numeric) -> list[str]:
    """Header, rule and one line per row (``numeric`` columns right-aligned), a blank line
    between rows of different ``group``s; "(no results)" when there are none."""
    rows = [tuple(columns)] + [tuple(row) for row in rows]
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(columns))]

    def fmt(row):
        cells = [str(c).rjust(w) if i in numeric else str(c).ljust(w)
                 for i, (c, w) in enumerate(zip(row, widths))]
        return "  ".join(cells).rstrip()

    lines = [fmt(rows[0]), "  ".join("-" * w for w in widths)]
    previous = None
    for r, row in zip(results, rows[1:]):
        if previous is not None and r.group != previous:
            lines.append("")
        previous = r.group
        lines.append(fmt(row))
    if not results:
        lines.append("(no results)")
    return lines


def trailer(skipped=(), threads=None, legend: str | None = None) -> list[str]:
    """The lines below a table: skipped implementations with the reason, threads, legend."""
    lines = [f"skipped: {name}: {reason}" for name, reason in skipped]
    if threads:
        lines.append("threads: " + "; ".join(f"{k}: {v}" for k, v in threads.items()))
    if legend:
        lines.append(legend)
    return lines


# --------------------------------------------------------------------------------------------
# Saved-model table (gpukb bench --model)
# --------------------------------------------------------------------------------------------

MODEL_COLUMNS = ("batch", "call", "implementation", "median ms", "vs fastest peer",
                 "max rel. diff")
MODEL_LEGEND = (
    "call: predict = Keras model.predict(x, batch_size=B, verbose=0), gpukb model.predict(x); "
    "model(x) = model(x, training=False) converted to NumPy (Keras: eager), gpukb model(x). "
    "median ms: median wall time of one call on the whole batch (two warm-up calls, the first "
    "with compilation, not timed); vs fastest peer: median / the fastest peer's median for the "
    "same batch and call (below 1.00x: faster than every peer); max rel. diff: "
    "max |out - ref| / max |ref| over the outputs, ref = gpukb[cpu]'s predict; above {tolerance:g} "
    "the row is marked wrong and never counts as the fastest peer."
)


def _model_row(r) -> tuple:
    from .models import CALL_LABELS

    call = CALL_LABELS[r.call]
    if r.status == "error":
        return (r.batch, call, r.implementation, "error", "", "")
    ratio = "" if r.ratio_to_fastest_peer is None else f"{r.ratio_to_fastest_peer:.2f}x"
    diff = f"{r.max_rel_diff:.1e}" + (" WRONG" if r.status == "wrong" else "")
    return (r.batch, call, r.implementation, f"{r.median_s * 1e3:.3f}", ratio, diff)


def format_model_table(results, *, skipped=(), threads=None, legend: bool = True) -> str:
    """``gpukb bench --model``'s results as a table, with the rows that failed or are wrong
    below it, then the skipped implementations, threads and legend."""
    from .models import CALL_LABELS, TOLERANCE

    lines = aligned(MODEL_COLUMNS, results, [_model_row(r) for r in results],
                    numeric={0, 3, 4, 5})
    lines += [f"{r.status}: {r.implementation}, B={r.batch} {CALL_LABELS[r.call]}: {r.error}"
              for r in results if r.status != "ok"]
    legend_text = MODEL_LEGEND.format(tolerance=TOLERANCE) if legend else None
    return "\n".join(lines + trailer(skipped, threads, legend_text))


def title(mode: str, machine: dict) -> str:
    """The first line ``gpukb bench`` prints: mode, gpukb version and commit, CPU, cores, date."""
    commit = f" ({machine['gpukb_commit']})" if machine["gpukb_commit"] else ""
    return (f"gpukb bench ({mode}): gpukb {machine['versions']['gpukb']}{commit}, "
            f"{machine['cpu']}, {machine['usable_cores']} usable cores, {machine['date']}")


# --------------------------------------------------------------------------------------------
# Machine information and JSON
# --------------------------------------------------------------------------------------------

def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    if sys.platform == "darwin":
        try:
            return subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"],
                                  capture_output=True, text=True, timeout=5).stdout.strip()
        except Exception:
            pass
    return platform.processor() or platform.machine() or "unknown"


def _git_commit() -> str | None:
    """The commit of the gpukb source tree, when gpukb runs from a git checkout."""
    import gpukb

    folder = Path(gpukb.__file__).resolve().parent
    try:
        out = subprocess.run(["git", "-C", str(folder), "describe", "--always", "--dirty",
                              "--abbrev=12"], capture_output=True, text=True, timeout=5)
    except Exception:
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None


def machine_info(implementations=()) -> dict:
    """CPU, cores, platform, Python, the versions of numpy/numba/gpukb and each prepared
    implementation's libraries, and the date (UTC)."""
    import numpy

    import gpukb

    versions = {"python": platform.python_version(), "numpy": numpy.__version__,
                "gpukb": gpukb.__version__}
    from importlib import metadata

    try:
        versions["numba"] = metadata.version("numba")
    except metadata.PackageNotFoundError:
        versions["numba"] = None
    for implementation in implementations:
        versions.update(implementation.versions)
    usable: int | None
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "platform": platform.platform(),
        "versions": versions,
        "gpukb_commit": _git_commit(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def result_dict(r) -> dict:
    return {
        "workload": r.workload,
        "dtype": r.dtype,
        "size": r.size.as_dict(),
        "implementation": r.implementation,
        "key": r.key,
        "kind": r.kind,
        "status": r.status,
        "error": r.error or None,
        "median_ms": None if r.median_s is None else r.median_s * 1e3,
        "min_ms": None if r.min_s is None else r.min_s * 1e3,
        "first_call_ms": None if r.first_call_s is None else r.first_call_s * 1e3,
        "repeats": r.repeats,
        "flops": r.flops,
        "gflops": r.gflops,
        "ratio_to_fastest_peer": r.ratio_to_fastest_peer,
        "relative_error": r.relative_error,
    }


def document(results, *, machine: dict, settings: dict, implementations=(), skipped=(),
             schema: str = SCHEMA, as_dict=result_dict) -> dict:
    """The JSON document ``--json`` writes (``as_dict``: one result as JSON data)."""
    return {
        "schema": schema,
        "machine": machine,
        "settings": settings,
        "implementations": [
            {"key": i.key, "kind": i.kind, "threads": i.threads, "versions": i.versions}
            for i in implementations
        ],
        "skipped": [{"name": name, "reason": reason} for name, reason in skipped],
        "results": [as_dict(r) for r in results],
    }


def write_json(path, doc: dict) -> None:
    Path(path).write_text(json.dumps(doc, indent=2) + "\n")


# --------------------------------------------------------------------------------------------
# Plot
# --------------------------------------------------------------------------------------------

PLOT_HINT = "pip install matplotlib (or pip install 'gpukb[plot]')"
PLOT_FORMATS = ("png", "svg", "pdf")


def matplotlib_problem() -> str | None:
    """None when matplotlib can be imported, else the error message to show."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return f"--plot needs matplotlib, which is not installed: {PLOT_HINT}"
    except Exception as error:
        return f"--plot needs matplotlib, which failed to import ({type(error).__name__}: {error})"
    return None


def plot(results, path, *, machine: dict | None = None) -> None:
    """Horizontal bars of GFLOP/s (higher is better), one panel per workload and size; gpukb rows
    in one colour, peers in another; the ratio to the fastest peer printed on each bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict = {}
    for r in results:
        if r.status == "ok":
            workload = r.workload if r.dtype == "float32" else f"{r.workload} {r.dtype}"
            groups.setdefault((workload, r.size), []).append(r)
    workloads = list(dict.fromkeys(w for w, _ in groups))
    sizes = list(dict.fromkeys(s for _, s in groups))
    if not groups:
        raise ValueError("nothing to plot: no implementation produced a result.")
    fig, axes = plt.subplots(len(workloads), len(sizes), squeeze=False,
                             figsize=(4.2 * len(sizes), 0.5 + 2.2 * len(workloads)))
    for i, workload in enumerate(workloads):
        for j, size in enumerate(sizes):
            ax = axes[i][j]
            rows = groups.get((workload, size), [])
            if not rows:
                ax.axis("off")
                continue
            labels = [r.implementation for r in rows]
            values = [r.gflops for r in rows]
            colours = ["tab:orange" if r.kind == "gpukb" else "tab:blue" for r in rows]
            y = range(len(rows))
            ax.barh(list(y), values, color=colours)
            ax.set_yticks(list(y), labels, fontsize=7)
            ax.invert_yaxis()
            ax.tick_params(axis="x", labelsize=7)
            ax.set_title(f"{workload.upper()}  {size.label}", fontsize=8)
            top = max(values)
            for k, r in enumerate(rows):
                if r.ratio_to_fastest_peer is not None:
                    ax.text(values[k] + 0.01 * top, k, f"{r.ratio_to_fastest_peer:.2f}x",
                            va="center", fontsize=6)
            ax.set_xlim(0, top * 1.25)
            if i == len(workloads) - 1:
                ax.set_xlabel("GFLOP/s (higher is better)", fontsize=7)
    title = "gpukb bench"
    if machine:
        title += (f": {machine.get('cpu', '')}, {machine.get('usable_cores', '?')} cores, "
                  f"{machine.get('date', '')[:10]}")
    fig.suptitle(title + "  (labels: time / fastest peer's)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=72)
    plt.close(fig)
