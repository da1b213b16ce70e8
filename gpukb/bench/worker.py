"""``python -m gpukb.bench.worker``: runs ONE implementation in this process, for ``gpukb bench``.

Reads a JSON spec on stdin (``key``, ``workloads``, ``sizes``, ``repeats``, ``budget_s``) and
writes events as JSON lines prefixed with ``runner.WORKER_MARK`` on stdout: ``skipped`` (with the
reason) or ``ready`` (threads, versions), then ``start``/``result`` per problem, then ``done``.
"""

from __future__ import annotations

import json
import sys


def _emit(event: dict) -> None:
    from .runner import WORKER_MARK

    sys.stdout.write(WORKER_MARK + json.dumps(event) + "\n")
    sys.stdout.flush()


def main() -> int:
    from .implementations import Skipped, make_implementation
    from .runner import result_to_wire, run_one
    from .workloads import Size, make_problem

    spec = json.loads(sys.stdin.read())
    implementation = make_implementation(spec["key"])
    try:
        implementation.prepare()
    except Skipped as why:
        _emit({"event": "skipped", "reason": str(why)})
        _emit({"event": "done"})
        return 0
    except Exception as error:  # noqa: BLE001 - a broken peer is skipped, with the error
        _emit({"event": "skipped", "reason": f"failed to load: {type(error).__name__}: {error}"})
        _emit({"event": "done"})
        return 0
    _emit({"event": "ready", "kind": implementation.kind, "threads": implementation.threads,
           "versions": implementation.versions})
    for workload in spec["workloads"]:
        if workload not in implementation.workloads:
            continue
        for size_dict in spec["sizes"]:
            size = Size(**size_dict)
            _emit({"event": "start", "workload": workload, "size": size_dict,
                   "size_label": size.label, "label": implementation.label(workload),
                   "kind": implementation.kind})
            problem = make_problem(workload, size)
            result = run_one(implementation, problem, repeats=spec["repeats"],
                             budget_s=spec["budget_s"])
            _emit({"event": "result", "result": result_to_wire(result)})
    _emit({"event": "done"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
