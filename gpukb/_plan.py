"""Decide, then run: the ``Plan`` a backend makes for one validated rnn call, and its log line.

``Backend.rnn`` asks the backend for a plan (``Backend.plan(call)``), logs it, then runs it
(``Backend.run_plan(plan, call)``). A plan names the backend, the path and why: for a fast path,
what made the call eligible; for a slower one, why the faster path could not run it. When a
path turns out not to run after all (the cpu backend's jit loop whose loop does not compile, a
plugin's ``fused_rnn`` returning NotImplemented), the backend logs the new plan, with the reason.

Plans go to the standard ``logging`` module, on the ``gpukb`` logger at DEBUG (a record's
``gpukb_plan`` attribute is the ``Plan`` itself): ``logging.basicConfig()`` and
``logging.getLogger("gpukb").setLevel(logging.DEBUG)`` print one line per ``gpukb.rnn`` call.
Nothing is formatted unless DEBUG is enabled.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Any, Iterator

logger = logging.getLogger("gpukb")

# Paths of the built-in backends (a plugin may name its own).
FUSED_CELL = "fused_cell"   # a Keras cell on the backend's fused cell kernels
JIT_LOOP = "jit_loop"       # the cpu backend's compiled time loop around a Numba step
FUSED_RNN = "fused_rnn"     # offered to the backend's own fused_rnn (a plugin's kernel)
FUSED_RNN_VJP = "fused_rnn_vjp"  # rnn_vjp offered to the backend's own fused_rnn_vjp
GENERIC = "generic"         # gpukb's generic loop (gpukb._rnn.run_generic)
PERSISTENT = "persistent"   # the cuda backend's persistent kernel: one launch for a whole sequence
PER_STEP = "per_step"       # the cuda backend's per-step path: a GEMM and one fused kernel per step


@dataclass(frozen=True)
class Plan:
    """How one rnn call runs: on ``backend``, down ``path``, because of ``reason``;
    ``replaces``: the path planned first that did not run after all ("" for a first plan);
    ``detail``: what the path needs to run, decided with it (the persistent kernel's tiling)."""

    backend: str
    path: str
    reason: str
    replaces: str = ""
    detail: Any = None

    def __str__(self) -> str:
        return f"{self.backend}: {self.path} ({self.reason})"


def log_plan(plan: Plan, call: Any, function: str = "gpukb.rnn") -> None:
    """Log ``plan`` for ``call`` (an ``RnnCall``) of ``function`` on the gpukb logger at DEBUG."""
    if logger.isEnabledFor(logging.DEBUG):
        instead = f" instead of {plan.replaces}" if plan.replaces else ""
        logger.debug("%s on backend %r (batch %d, %d steps): %s path%s, %s", function, plan.backend,
                     call.batch_size, call.time_steps, plan.path, instead, plan.reason,
                     extra={"gpukb_plan": plan})


class _Collector(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.plans: list[Plan] = []

    def emit(self, record: logging.LogRecord) -> None:
        plan = getattr(record, "gpukb_plan", None)
        if plan is not None:
            self.plans.append(plan)


@contextlib.contextmanager
def recorded_plans() -> Iterator[list[Plan]]:
    """Collect the plans logged while the block runs, in order (the gpukb logger is set to
    DEBUG meanwhile). For tests and diagnostics."""
    collector = _Collector()
    level = logger.level
    logger.addHandler(collector)
    logger.setLevel(logging.DEBUG)
    try:
        yield collector.plans
    finally:
        logger.removeHandler(collector)
        logger.setLevel(level)
