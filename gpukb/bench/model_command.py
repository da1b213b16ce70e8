"""``gpukb bench --model PATH``: its arguments, their validation (before anything runs), the run.

The parent process loads the model with gpukb (every file and input problem is reported here,
as a usage error), makes each batch size's inputs and computes the reference outputs with
gpukb's ``cpu`` backend, and stores them in a temporary folder; then each implementation runs in
its own worker process (``runner.run_workers``) on those very inputs.
"""

from __future__ import annotations

import os
import sys
import tempfile
from typing import Any

from .command import (MODEL_BATCH_SIZES, WORKLOADS_ONLY, _list, common_settings, failed_gpukb,
                      gpukb_keys, refuse_options)


def _batch_sizes(text: str, parser) -> list[int]:
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts or not all(p.isdigit() and int(p) > 0 for p in parts):
        parser.error(f"--batch-sizes {text!r}: give comma-separated positive integers, "
                     "e.g. 1,8,64.")
    return list(dict.fromkeys(int(p) for p in parts))


def validate(args, parser) -> dict:
    """Check every argument and the model before anything runs; returns the run's settings
    (with the loaded model and its input plans)."""
    import gpukb

    from . import model_peers, models

    refuse_options(args, parser, WORKLOADS_ONLY, "does not apply with --model (it times the "
                   "model's own layers; --steps and --batch-sizes set the inputs)")
    settings: dict[str, Any] = common_settings(args, parser)
    peers = _list(args.peers, ("keras3",) + model_peers.MODEL_PEER_NAMES, "peers", parser)
    settings["peers"] = model_peers.model_peer_keys(
        peers if peers is not None else model_peers.MODEL_PEER_NAMES)
    if settings["backends"] == [] and settings["peers"] == []:
        parser.error("--backends none with --peers none leaves nothing to run.")
    try:
        model = gpukb.keras.load_model(args.model, backend="cpu")
    except (gpukb.keras.ModelFileError, gpukb.keras.UnsupportedLayerError) as error:
        parser.error(f"--model: {error}")
    stateful = [layer.name for layer in model.layers if getattr(layer, "stateful", False)]
    if stateful:
        parser.error(f"--model {args.model}: the layer(s) {', '.join(stateful)} are stateful: "
                     "each call would continue the previous call's states, so calls are not "
                     "repeatable and gpukb bench does not time such a model.")
    try:
        plans = models.plan_inputs(model, args.steps)
        fixed = {p.batch for p in plans if p.batch is not None}
        if args.batch_sizes is not None:
            batch_sizes = _batch_sizes(args.batch_sizes, parser)
        elif fixed:
            batch_sizes = sorted(fixed)
        else:
            batch_sizes = list(MODEL_BATCH_SIZES["quick" if args.quick else "full"])
        models.check_batch_sizes(plans, batch_sizes)
    except ValueError as error:
        parser.error(f"--model {args.model}: {error}")
    settings.update(model=model, path=os.path.abspath(args.model), plans=plans,
                    batch_sizes=batch_sizes)
    return settings


def describe(model, plans) -> str:
    """``model: PATH (name, written by Keras 3.15.1, Keras 3 .keras file); inputs: ...``."""
    from ..keras._summary import _FORMATS

    spec = model.spec
    parts = []
    for plan in plans:
        text = plan.label()
        if plan.vocabulary is not None:
            text += f" ids in [0, {plan.vocabulary - 1}]" + (", zero-padded" if plan.mask_zero
                                                              else "")
        parts.append(text)
    return (f"{model.name!r} ({spec.class_name}; written by Keras {spec.keras_version}, "
            f"{_FORMATS.get(spec.file_format, spec.file_format)} file); "
            f"inputs: {'; '.join(parts)}")


def run(args, parser) -> int:
    settings = validate(args, parser)

    from . import model_peers, models, report, runner

    keys, left_out = gpukb_keys(settings)
    keys += settings["peers"]
    batch_sizes, calls = settings["batch_sizes"], list(models.CALLS)
    progress = runner.ProgressBar(len(keys) * len(batch_sizes) * len(calls),
                                  enabled=not args.no_progress)
    progress.show("making the inputs and gpukb's reference outputs")
    with tempfile.TemporaryDirectory(prefix="gpukb-bench-model-") as folder:
        problems = []
        for batch in batch_sizes:
            path = os.path.join(folder, f"batch{batch}.npz")
            models.make_problem(settings["model"], settings["plans"], batch).save(path)
            problems.append([batch, path])
        spec = {"model": settings["path"], "problems": problems, "calls": calls,
                "repeats": settings["repeats"], "budget_s": settings["budget"]}

        def crashed(key: str, started: dict, why: str) -> models.ModelResult:
            return models.ModelResult(started["batch"], started["call"], started["label"], key,
                                      started["kind"], status="error", error=why)

        results, ready, skipped = runner.run_workers(
            keys, spec, per_key=len(batch_sizes) * len(calls),
            from_wire=models.ModelResult.from_wire, crashed=crashed, progress=progress)
    progress.close()
    skipped += left_out
    order = {k: i for i, k in enumerate(keys)}
    results.sort(key=lambda r: (batch_sizes.index(r.batch), calls.index(r.call), order[r.key]))
    runner.add_ratios(results)

    machine = report.machine_info(ready)
    mode = "quick" if args.quick else "full"
    print(report.title(mode, machine))
    print(f"model: {args.model}: {describe(settings['model'], settings['plans'])}")
    threads = {i.key: i.threads for i in ready}
    print(report.format_model_table(results, skipped=skipped, threads=threads))
    if settings["peers"] and not any(i.kind == "peer" for i in ready):
        print("No peer ran, so there is nothing to compare with. To install the peers: "
              f"{model_peers.INSTALL_MODEL_PEERS}")
    if settings["json"] is not None:
        recorded = {"mode": mode, "repeats": settings["repeats"], "budget_s": settings["budget"],
                    "model": settings["path"], "model_name": settings["model"].name,
                    "inputs": [{"name": p.name, "shape": ["B", *p.shape], "dtype": p.dtype,
                                "vocabulary": p.vocabulary, "mask_zero": p.mask_zero}
                               for p in settings["plans"]],
                    "batch_sizes": batch_sizes, "calls": calls,
                    "peers": settings["peers"], "backends": settings["backends"]}
        doc = report.document(results, machine=machine, settings=recorded, implementations=ready,
                              skipped=skipped, schema=report.MODEL_SCHEMA,
                              as_dict=models.ModelResult.as_dict)
        report.write_json(settings["json"], doc)
        print(f"saved {settings['json']}", file=sys.stderr)
    return failed_gpukb(results)
