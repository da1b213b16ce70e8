"""``gpukb bench``: its arguments, their validation (before anything runs), and the run."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

#: The one-line help of ``gpukb bench`` in ``gpukb --help``.
SUMMARY = ("time gpukb.rnn against PyTorch, JAX, Keras and onnxruntime (the peers installed "
           "here), or with --model a saved Keras model against Keras itself")

DESCRIPTION = """\
Time gpukb.rnn (LSTM and GRU, every available gpukb backend) against the peers installed here
(PyTorch nn.LSTM/nn.GRU, JAX lax.scan, Keras 3, tf.keras, onnxruntime) and print a table: median
ms, GFLOP/s, the ratio to the fastest peer and the relative error against a float64 NumPy
reference. Each implementation runs in its own process; its first two calls (compilation,
warm-up) are not timed. Peers that are not installed are listed as skipped; to install them:
{install}
Plugin backends without a kernel of their own (they run gpukb's generic Python loop, or take
each call over to run gpukb's kernels elsewhere, as the dask plugin does) only run when named
with --backends.

With --model PATH: time a saved Keras model (.keras or .h5) run by gpukb.keras against Keras
itself loading the same file: Keras 3 with each backend (jax, torch, numpy, tensorflow; one
process each) and tf.keras (tf_keras), at a few batch sizes, both model.predict(x) and model(x).
Inputs are made from the model's input shapes (token ids within each Embedding's range, zero
padding where it has mask_zero); every implementation's outputs are checked against gpukb's and
a peer that disagrees is marked wrong. To install those peers:
{install_models}"""

# Sub-millisecond workloads need many calls for a steady median; the budget caps the slow ones.
QUICK = {"repeats": 30, "budget": 0.5}
FULL = {"repeats": 30, "budget": 3.0}
#: ``--model``: batch sizes timed when ``--batch-sizes`` is not given.
MODEL_BATCH_SIZES = {"full": (1, 8, 64), "quick": (1, 8)}
#: Options of one mode only: (option, its argparse attribute).
MODEL_ONLY = (("--steps", "steps"), ("--batch-sizes", "batch_sizes"))
#: Options of ``--grid`` only (gpukb/bench/grid.py).
GRID_ONLY = (("--batches", "batches"), ("--units", "units"), ("--rounds", "rounds"))
WORKLOADS_ONLY = (("--workloads", "workloads"), ("--sizes", "sizes"), ("--plot", "plot"),
                  ("--dtypes", "dtypes"), ("--grid", "grid")) + GRID_ONLY


def description() -> str:
    """The long help of ``gpukb bench``."""
    from .model_peers import INSTALL_MODEL_PEERS
    from .peers import INSTALL_PEERS

    return DESCRIPTION.format(install=INSTALL_PEERS, install_models=INSTALL_MODEL_PEERS)


def default_text(full, quick) -> str:
    """``"default: 30"``, or ``"default: 3; --quick: 0.5"`` when --quick changes it: the help
    states the values the run uses (tests/test_cli.py parses it back)."""
    def shown(value) -> str:
        return " ".join(map(str, value)) if isinstance(value, (list, tuple)) else f"{value:g}"

    full_text, quick_text = shown(full), shown(quick)
    if quick_text == full_text:
        return f"default: {full_text}, also with --quick"
    return f"default: {full_text}; --quick: {quick_text}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from . import model_peers, models, peers, workloads

    sizes = default_text([s.key for s in workloads.FULL_SIZES],
                         [s.key for s in workloads.QUICK_SIZES])
    parser.add_argument("--quick", action="store_true",
                        help="smaller sizes and a smaller time budget (under a minute on 2 cores)")
    parser.add_argument("--json", metavar="FILE",
                        help="also save the results, with machine information, as JSON")
    parser.add_argument("--plot", metavar="FILE.png",
                        help="also draw the results (needs matplotlib: pip install 'gpukb[plot]')")
    parser.add_argument("--workloads", metavar="LIST",
                        help=f"comma-separated workloads among {', '.join(workloads.WORKLOADS)} "
                             f"(default: {', '.join(workloads.BENCH_WORKLOADS)}; with --grid: "
                             "all)")
    parser.add_argument("--dtypes", metavar="LIST",
                        help=f"comma-separated among {', '.join(workloads.DTYPES)} (default: "
                             "float32; with --grid: both). A peer without a kernel for a dtype "
                             "is listed as n/a with the reason")
    parser.add_argument("--sizes", metavar="BxTxDxH", nargs="+",
                        help=f"sizes to run instead of the defaults ({sizes})")
    parser.add_argument("--backends", metavar="LIST",
                        help="comma-separated gpukb backends (default: every available one that "
                             "has its own kernels; 'none': peers only)")
    parser.add_argument("--peers", metavar="LIST",
                        help=f"comma-separated peers among {', '.join(peers.PEER_NAMES)} "
                             "(default: all that are installed; 'none': no peers); with --model: "
                             f"among keras3 (every backend), "
                             f"{', '.join(model_peers.MODEL_PEER_NAMES)}")
    parser.add_argument("--repeats", type=int, metavar="N",
                        help="timed calls per measurement "
                             f"({default_text(FULL['repeats'], QUICK['repeats'])})")
    parser.add_argument("--budget", type=float, metavar="SECONDS",
                        help="stop repeating a measurement after this many seconds "
                             f"({default_text(FULL['budget'], QUICK['budget'])})")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bar on stderr")
    add_grid_arguments(parser)
    parser.add_argument("--generic", action="store_true",
                        help="time the generic loop's own cost instead: a plain Python step "
                             "through gpukb.rnn against a hand-written loop and Keras 3's NumPy "
                             "rnn, each in its own process (python -m gpukb.bench.generic; "
                             "--rounds N, default 3; --backends NAME: one backend)")
    parser.add_argument("--backward", action="store_true",
                        help="time forward + backward (gpukb.rnn_vjp and its pullback) of LSTM "
                             "and GRU against torch (.backward()) and JAX (jax.vjp of lax.scan), "
                             "each in its own process (gpukb/bench/backward.py); with --quick: "
                             "one small size; --sizes, --workloads (lstm, gru), --repeats, "
                             "--budget and --json apply")
    parser.add_argument("--masks", action="store_true", default=None,
                        help="time what masks cost gpukb's fused CPU kernels: gpukb.rnn of "
                             "LSTM, GRU and SimpleRNN with no mask, right and left padding and "
                             "a random mask, and gpukb.rnn_vjp + pullback of LSTM and GRU with "
                             "no mask and a random mask, float32, the kinds timed in turn; "
                             "prints each one's ratio to no mask against the 10%% goal "
                             "(gpukb/bench/masks.py; --rounds N, default 3; --sizes, "
                             "--workloads, --repeats, --budget and --json apply)")
    parser.add_argument("--model", metavar="PATH",
                        help="time this saved Keras model (.keras or .h5) with gpukb.keras "
                             "against Keras 3 and tf.keras instead of the gpukb.rnn workloads")
    parser.add_argument("--steps", type=int, metavar="T",
                        help="with --model: time steps of the inputs whose length the file "
                             "leaves open; a length the file fixes is used as it is "
                             f"({default_text(models.DEFAULT_STEPS, models.DEFAULT_STEPS)})")
    parser.add_argument("--batch-sizes", metavar="LIST",
                        help="with --model: comma-separated batch sizes; a model whose file "
                             "fixes the batch size gets that one ("
                             + default_text(MODEL_BATCH_SIZES["full"], MODEL_BATCH_SIZES["quick"])
                             + ")")


def add_grid_arguments(parser: argparse.ArgumentParser) -> None:
    from . import grid

    parser.add_argument("--grid", action="store_true", default=None,
                        help="time LSTM, GRU and SimpleRNN, float32 and float64, over batch "
                             "sizes x units (D = H/2; T from a FLOP target: "
                             f"{grid.STEPS_RULE}), one worker process per implementation; "
                             "print the heat map of gpukb / fastest peer as Markdown; --json "
                             "saves every point, --plot draws the heat map. --quick: "
                             f"B {','.join(map(str, grid.QUICK_BATCHES))} x H "
                             f"{','.join(map(str, grid.QUICK_UNITS))}, float32; budget per "
                             f"point {grid.BUDGET_S:g} s (--quick: {grid.QUICK_BUDGET_S:g})")
    parser.add_argument("--batches", metavar="LIST",
                        help="with --grid: comma-separated batch sizes (default: "
                             f"{','.join(map(str, grid.BATCHES))})")
    parser.add_argument("--units", metavar="LIST",
                        help="with --grid: comma-separated even unit counts H (default: "
                             f"{','.join(map(str, grid.UNITS))})")
    parser.add_argument("--rounds", type=int, metavar="N",
                        help="with --grid: run every implementation N times, interleaved, and "
                             "keep each point's best round (default: 1); with --masks: run the "
                             "whole plan N times, each round in a fresh process, and keep each "
                             "row's best round (default: 3)")


def _list(text: str | None, known, what: str, parser) -> list | None:
    """A comma-separated option: None when not given, [] for 'none', else the checked names."""
    if text is None:
        return None
    names = [n.strip() for n in text.split(",") if n.strip()]
    if names == ["none"]:
        return []
    if not names:
        parser.error(f"--{what}: give a comma-separated list (known: {', '.join(known)}) "
                     "or 'none'.")
    unknown = [n for n in names if n not in known]
    if unknown:
        parser.error(f"--{what}: unknown {', '.join(map(repr, unknown))}; known: "
                     f"{', '.join(known)} (or 'none').")
    return list(dict.fromkeys(names))


def _output_path(text: str, option: str, parser) -> Path:
    path = Path(text)
    if path.is_dir():
        parser.error(f"{option} {text}: is a folder; give a file name.")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        parser.error(f"{option} {text}: the folder {parent} does not exist.")
    if not os.access(parent, os.W_OK):
        parser.error(f"{option} {text}: the folder {parent} is not writable.")
    return path


def common_settings(args, parser) -> dict:
    """``--quick``, ``--repeats``, ``--budget``, ``--backends`` and ``--json``, checked: the
    settings both modes share."""
    from gpukb import _dispatch

    settings: dict[str, Any] = dict(FULL if not args.quick else QUICK)
    if args.repeats is not None:
        if args.repeats < 1:
            parser.error(f"--repeats must be at least 1, got {args.repeats}.")
        settings["repeats"] = args.repeats
    if args.budget is not None:
        if not args.budget > 0:
            parser.error(f"--budget must be a positive number of seconds, got {args.budget}.")
        settings["budget"] = args.budget
    records = {r.name: r for r in _dispatch.backend_records()}
    backends = _list(args.backends, sorted(records), "backends", parser)
    if backends:
        for name in backends:
            if not records[name].availability:
                hint = records[name].backend.install_hint
                parser.error(f"--backends: backend {name!r} is not available here: "
                             f"{records[name].availability.reason}" + (f". {hint}" if hint else ""))
    settings["backends"] = backends  # None: every discovered one (unavailable ones: skipped)
    settings["json"] = _output_path(args.json, "--json", parser) if args.json else None
    return settings


def refuse_options(args, parser, options, why: str) -> None:
    """A parser error for the first of ``options`` ((option, attribute) pairs) that was given."""
    for option, attribute in options:
        if getattr(args, attribute) is not None:
            parser.error(f"{option} {why}.")


def validate(args, parser) -> dict:
    """Check every argument before anything runs; returns the run's settings."""
    from . import peers, report, workloads

    refuse_options(args, parser, MODEL_ONLY, "only applies with --model")
    refuse_options(args, parser, GRID_ONLY[:2], "only applies with --grid")
    refuse_options(args, parser, GRID_ONLY[2:], "only applies with --grid, --masks or --generic")
    settings = common_settings(args, parser)
    given = args.workloads if args.workloads is not None else ",".join(workloads.BENCH_WORKLOADS)
    settings["workloads"] = _list(given, workloads.WORKLOADS, "workloads", parser)
    if not settings["workloads"]:
        parser.error(f"--workloads: give at least one of {', '.join(workloads.WORKLOADS)}.")
    settings["dtypes"] = _list(args.dtypes or "float32", workloads.DTYPES, "dtypes", parser)
    if not settings["dtypes"]:
        parser.error(f"--dtypes: give at least one of {', '.join(workloads.DTYPES)}.")
    if args.sizes:
        try:
            settings["sizes"] = [workloads.Size.parse(s) for s in args.sizes]
        except ValueError as error:
            parser.error(f"--sizes: {error}")
    else:
        settings["sizes"] = list(workloads.QUICK_SIZES if args.quick else workloads.FULL_SIZES)
    settings["peers"] = _list(args.peers, peers.PEER_NAMES, "peers", parser)
    if settings["peers"] is None:
        settings["peers"] = list(peers.PEER_NAMES)
    if settings["backends"] == [] and settings["peers"] == []:
        parser.error("--backends none with --peers none leaves nothing to run.")
    settings["plot"] = plot_path(args, parser)
    return settings


def plot_path(args, parser) -> Path | None:
    """--plot's file, checked (a known image format; matplotlib importable), or None."""
    from . import report

    if not args.plot:
        return None
    path = _output_path(args.plot, "--plot", parser)
    if path.suffix.lower().lstrip(".") not in report.PLOT_FORMATS:
        parser.error(f"--plot {args.plot}: the file name must end in "
                     f"{', '.join('.' + f for f in report.PLOT_FORMATS)}.")
    problem = report.matplotlib_problem()
    if problem:
        parser.error(problem)
    return path


def gpukb_keys(settings) -> tuple[list[str], list[tuple[str, str]]]:
    """The gpukb implementations to run (``gpukb[NAME]``) and the backends left out by default
    as (key, reason)."""
    from gpukb import _dispatch

    from . import implementations

    backends = settings["backends"]
    left_out: list[tuple[str, str]] = []
    if backends is None:
        backends, left_out = implementations.default_backends(_dispatch.backend_records())
    return [f"gpukb[{name}]" for name in backends], left_out


def failed_gpukb(results) -> int:
    """Exit status: 1 (with a message on stderr) when a gpukb measurement failed."""
    failed = [r for r in results if r.kind == "gpukb" and r.status != "ok"]
    if failed:
        print(f"gpukb bench: {len(failed)} gpukb measurement(s) failed (see the table).",
              file=sys.stderr)
        return 1
    return 0


def run(args, parser) -> int:
    if getattr(args, "masks", None):
        from . import masks

        return masks.run(args, parser)
    if getattr(args, "backward", False):
        from . import backward

        return backward.command(args, parser)
    if args.generic:
        from . import generic

        return generic.command(args, parser)
    if args.model is not None:
        from . import model_command

        return model_command.run(args, parser)
    if args.grid:
        from . import grid

        return grid.run(args, parser)
    settings = validate(args, parser)

    from . import peers, report, runner

    keys, left_out = gpukb_keys(settings)
    keys += peers.peer_keys(settings["peers"])
    workloads, sizes, dtypes = settings["workloads"], settings["sizes"], settings["dtypes"]
    progress = runner.ProgressBar(len(keys) * len(workloads) * len(sizes) * len(dtypes),
                                  enabled=not args.no_progress)
    results, ready, skipped = runner.run_isolated(
        keys, workloads, sizes, repeats=settings["repeats"], budget_s=settings["budget"],
        progress=progress, dtypes=dtypes,
    )
    progress.close()
    skipped += left_out

    machine = report.machine_info(ready)
    mode = "quick" if args.quick else "full"
    print(report.title(mode, machine))
    threads = {i.key: i.threads for i in ready}
    print(report.format_table(results, skipped=skipped, threads=threads))
    if settings["peers"] and not any(i.kind == "peer" for i in ready):
        print(f"No peer ran, so there is nothing to compare with. To install the peers: "
              f"{peers.INSTALL_PEERS}")

    if settings["json"] is not None:
        recorded = {"mode": mode, "repeats": settings["repeats"], "budget_s": settings["budget"],
                    "workloads": settings["workloads"], "dtypes": settings["dtypes"],
                    "sizes": [s.as_dict() for s in settings["sizes"]],
                    "peers": settings["peers"], "backends": settings["backends"]}
        doc = report.document(results, machine=machine, settings=recorded,
                              implementations=ready, skipped=skipped)
        report.write_json(settings["json"], doc)
        print(f"saved {settings['json']}", file=sys.stderr)
    if settings["plot"] is not None:
        try:
            report.plot(results, settings["plot"], machine=machine)
        except ValueError as error:
            print(f"gpukb bench: no plot: {error}", file=sys.stderr)
            return 1
        print(f"saved {settings['plot']}", file=sys.stderr)
    return failed_gpukb(results)
