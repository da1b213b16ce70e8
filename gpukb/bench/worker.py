"""``python -m gpukb.bench.worker``: runs ONE implementation in this process, for ``gpukb bench``.

Reads a JSON spec on stdin and writes events as JSON lines prefixed with ``runner.WORKER_MARK``
on stdout: ``skipped`` (with the reason) or ``ready`` (threads, versions), then ``start`` (with a
``title`` for the progress bar) and ``result`` per problem, then ``done``. Two kinds of spec:

- ``gpukb.rnn`` workloads: ``key``, ``workloads``, ``sizes``, ``dtypes`` (default float32),
  ``repeats``, ``budget_s``; or, instead of the three lists, ``points`` (``gpukb bench --grid``:
  each a workload, dtype and size) and ``check_rows`` (see ``workloads.Problem``); and
  ``references``, a folder of the problems' references (``runner.write_references``);
- a saved model (``gpukb bench --model``): ``key``, ``model`` (the file), ``problems`` (batch
  size -> the ``.npz`` of its inputs and reference outputs), ``calls``, ``repeats``, ``budget_s``.
"""

from __future__ import annotations

import json
import sys


def _emit(event: dict) -> None:
    from .runner import WORKER_MARK

    sys.stdout.write(WORKER_MARK + json.dumps(event) + "\n")
    sys.stdout.flush()


def _prepared(implementation, *steps) -> bool:
    """Run the preparation ``steps``; on ``Skipped`` (or a broken library) emit the skip and
    ``done`` and return False."""
    from .implementations import Skipped

    try:
        for step in steps:
            step()
    except Skipped as why:
        _emit({"event": "skipped", "reason": str(why)})
    except Exception as error:  # noqa: BLE001 - a broken peer is skipped, with the error
        _emit({"event": "skipped", "reason": f"failed to load: {type(error).__name__}: {error}"})
    else:
        _emit({"event": "ready", "kind": implementation.kind, "threads": implementation.threads,
               "versions": implementation.versions})
        return True
    _emit({"event": "done"})
    return False


def workload_points(spec: dict) -> list[dict]:
    """The problems of a workloads spec, in run order: its ``points``, or every workload x dtype
    x size."""
    if "points" in spec:
        return spec["points"]
    return [{"workload": workload, "dtype": dtype, "size": size}
            for workload in spec["workloads"] for dtype in spec.get("dtypes", ["float32"])
            for size in spec["sizes"]]


def run_workloads(spec: dict) -> None:
    from .implementations import make_implementation
    from .runner import result_to_wire, run_one
    from .workloads import Size, make_problem

    implementation = make_implementation(spec["key"])
    if not _prepared(implementation, implementation.prepare):
        return
    for point in workload_points(spec):
        workload, dtype, size = point["workload"], point["dtype"], Size(**point["size"])
        if workload not in implementation.workloads:
            continue
        label = implementation.label(workload)
        shown = workload if dtype == "float32" else f"{workload} {dtype}"
        _emit({"event": "start", "workload": workload, "dtype": dtype, "size": point["size"],
               "title": f"{shown} {size.label} {label}", "label": label,
               "kind": implementation.kind})
        problem = make_problem(workload, size, dtype=dtype, check_rows=spec.get("check_rows"))
        if "references" in spec:   # computed by the parent: no BLAS here between timed calls
            problem.load_reference(spec["references"])
        result = run_one(implementation, problem, repeats=spec["repeats"],
                         budget_s=spec["budget_s"])
        _emit({"event": "result", "result": result_to_wire(result)})
    _emit({"event": "done"})


def run_model(spec: dict) -> None:
    from .model_peers import make_model_implementation
    from .models import CALL_LABELS, ModelProblem, run_one

    implementation = make_model_implementation(spec["key"])
    if not _prepared(implementation, implementation.prepare,
                     lambda: implementation.load(spec["model"])):
        return
    for batch, path in spec["problems"]:
        problem = ModelProblem.load(batch, path)
        for call in spec["calls"]:
            label = implementation.label(call)
            _emit({"event": "start", "batch": batch, "call": call, "label": label,
                   "title": f"B={batch} {CALL_LABELS[call]} {label}",
                   "kind": implementation.kind})
            result = run_one(implementation, problem, call, repeats=spec["repeats"],
                             budget_s=spec["budget_s"])
            _emit({"event": "result", "result": result.to_wire()})
    _emit({"event": "done"})


def main() -> int:
    spec = json.loads(sys.stdin.read())
    (run_model if "model" in spec else run_workloads)(spec)
    return 0


if __name__ == "__main__":
    sys.exit(main())
