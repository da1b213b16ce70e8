"""``gpukb.Backend``: the base class of every backend, built-in or plugin.

A backend says which array types it accepts (as ``"module:QualName"`` strings, so matching needs no
import), whether it can run here (``is_available``), and gives its array namespace ``xp``. Its
``rnn`` runs the one shared rnn semantics core (``gpukb._rnn``): it validates the call, makes a
plan for it (``plan``: which path and why, logged; see ``gpukb._plan``), then runs the plan
(``run_plan``). A backend adds speed in those two (or, for a plugin, in ``fused_rnn``), never its
own reading of the semantics.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from .cells import Cell

if TYPE_CHECKING:
    from ._plan import Plan
    from ._rnn import RnnCall


@dataclass(frozen=True)
class Availability:
    """The answer of ``Backend.is_available()``: truthy when usable, else falsy with a reason."""

    available: bool
    reason: str = ""

    def __bool__(self) -> bool:
        return self.available

    @classmethod
    def coerce(cls, value: Any) -> "Availability":
        """Accept what plugins may return: an Availability, a bool, or ``(bool, reason)``."""
        if isinstance(value, Availability):
            return value
        if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], str):
            return cls(bool(value[0]), value[1])
        if isinstance(value, bool):
            return cls(value, "" if value else "unavailable (the backend gave no reason)")
        raise TypeError(
            "is_available() must return True, False, (bool, reason) or gpukb.Availability, "
            f"got {value!r}."
        )


def available() -> Availability:
    return Availability(True)


def unavailable(reason: str) -> Availability:
    return Availability(False, reason)


class Backend:
    """Subclass this to add a backend; register the subclass in the entry-point group
    ``gpukb.backends`` (``name = "package.module:BackendClass"``).

    Class attributes:
      ``name``: the backend's name (the entry point's name must match it);
      ``array_types``: the array types it accepts, as ``"module:QualName"`` strings;
      ``priority``: among backends that accept the same array type, the highest wins;
      ``install_hint``: what to install when it is unavailable (shown in the error);
      ``companion_types``: array types it also takes in a call that has arrays of its own
      ``array_types`` (a Dask backend taking NumPy states next to Dask inputs); they never select
      it by themselves.
    Override ``is_available`` (cheap: no heavy imports), ``_load_xp`` (the array namespace),
    ``asarray``/``to_numpy`` when NumPy conversion needs more than ``xp.asarray``/``numpy.asarray``,
    optionally ``namespace`` (per-call namespace, e.g. bound to a device), ``fused_rnn`` (speed;
    or ``plan`` and ``run_plan`` to choose among several kernels and say why) or ``rnn`` (to take
    over completely), ``fused_rnn_vjp`` (fused gradients for ``rnn_vjp``; or ``plan_vjp`` and
    ``run_vjp_plan``, and ``run_vjp_plan_recomputing`` for ``recompute=True``), and
    ``on_clear_session``.
    """

    name: str = ""
    array_types: tuple[str, ...] = ()
    priority: int = 0
    install_hint: str = ""
    companion_types: tuple[str, ...] = ()

    def __init__(self) -> None:
        self._xp: Any = None

    # -- availability and namespace -----------------------------------------------------------

    def is_available(self) -> Availability | bool | tuple[bool, str]:
        """True, or a falsy ``Availability`` whose ``reason`` a user can read."""
        return available()

    @property
    def xp(self) -> Any:
        """The backend's array namespace (NumPy, CuPy, ...), loaded on first use."""
        if self._xp is None:
            self._xp = self._load_xp()
        return self._xp

    def _load_xp(self) -> Any:
        raise NotImplementedError(f"backend {self.name!r} does not define _load_xp()")

    def namespace(self, leaves: list[Any]) -> Any:
        """The array namespace for one call whose input arrays are ``leaves`` (default: ``xp``).

        Override to bind per-call context, e.g. the device of the inputs."""
        return self.xp

    def asarray(self, value: Any) -> Any:
        """A NumPy array as this backend's array (used by gpukb.testing and for cell weights)."""
        return self.xp.asarray(value)

    def to_numpy(self, array: Any) -> Any:
        """This backend's array as a NumPy array (used by gpukb.testing)."""
        import numpy

        return numpy.asarray(array)

    # -- the rnn loop -------------------------------------------------------------------------

    def rnn(self, step_function: Callable[[Any, Any], Any], inputs: Any,
            initial_states: list[Any] | tuple[Any, ...], **options: Any) -> tuple[Any, Any, Any]:
        """Run ``gpukb.rnn`` on this backend: the shared semantics, fused where possible."""
        from ._plan import log_plan  # loads logging: not at import gpukb

        plan, call = self.planned_call(step_function, inputs, initial_states, **options)
        log_plan(plan, call)
        return self.run_plan(plan, call)

    def planned_call(self, step_function: Callable[[Any, Any], Any], inputs: Any,
                     initial_states: list[Any] | tuple[Any, ...],
                     **options: Any) -> tuple["Plan", "RnnCall"]:
        """``(plan, call)`` for an ``rnn`` call, running nothing: a cell's weights and arguments
        in its namespace and dtype, the call checked (``prepare``) and planned (``plan``)."""
        if isinstance(step_function, Cell):
            import optree

            xp = self.namespace(optree.tree_leaves(inputs))
            step_function = step_function.converted(xp.asarray)
            inputs, initial_states = step_function.cast_rnn_arguments(inputs, initial_states)
        call = self.prepare(step_function, inputs, initial_states, **options)
        return self.plan(call), call

    def prepare(self, step_function: Callable[[Any, Any], Any], inputs: Any,
                initial_states: list[Any] | tuple[Any, ...], **options: Any) -> RnnCall:
        """Check and normalise an ``rnn`` call on this backend's namespace, running nothing: the
        validated ``gpukb._rnn.RnnCall`` that ``plan`` and ``fused_rnn`` get, or gpukb's usual
        error. For a backend that overrides ``rnn`` (to split the call into pieces, say) and must
        refuse a bad call before any work starts. Nothing in the arrays is read except masks and
        per-sample lengths (converted with the namespace's ``asarray``; lengths on the host are
        checked there)."""
        from . import _rnn

        if type(self).namespace is Backend.namespace:  # the leaves are only namespace's argument
            xp = self.xp
        else:
            import optree

            xp = self.namespace(optree.tree_leaves(inputs))
        return _rnn.prepare(step_function, inputs, initial_states, xp=xp, backend=self.name, **options)

    def plan(self, call: RnnCall) -> Plan:
        """Decide how to run a validated ``gpukb._rnn.RnnCall``: a ``gpukb._plan.Plan`` naming the
        path and why. The default offers the call to ``fused_rnn`` when the backend overrides
        it, else runs the generic loop. Deciding must not change a result or raise for a call
        the generic loop can run."""
        from ._plan import FUSED_RNN, GENERIC, Plan

        if type(self).fused_rnn is not Backend.fused_rnn:
            return Plan(self.name, FUSED_RNN, "offered to the backend's fused_rnn (the generic "
                                              "loop runs it if that returns NotImplemented)")
        return Plan(self.name, GENERIC, "the backend has no fused kernels")

    def run_plan(self, plan: Plan, call: RnnCall) -> tuple[Any, Any, Any]:
        """Run ``call`` as ``plan`` says. The default: the generic loop for a ``generic`` plan;
        otherwise ``fused_rnn``, and the generic loop (logged as a new plan) when that returns
        NotImplemented."""
        from ._plan import GENERIC, Plan, log_plan
        from ._rnn import run_generic

        if plan.path != GENERIC:
            result = self.fused_rnn(call)
            if result is not NotImplemented:
                return result
            log_plan(Plan(self.name, GENERIC, "fused_rnn returned NotImplemented", plan.path), call)
        return run_generic(call)

    def fused_rnn(self, call: RnnCall) -> Any:
        """Run a validated ``gpukb._rnn.RnnCall`` with a fused kernel, or return NotImplemented
        to let the generic loop run it. Must give exactly the generic loop's results."""
        return NotImplemented

    # -- gradients: rnn_vjp -------------------------------------------------------------------

    def rnn_vjp(self, step_function: Callable[[Any, Any], Any], inputs: Any,
                initial_states: list[Any] | tuple[Any, ...], *, return_residuals: bool = False,
                recompute: bool = False, **options: Any) -> tuple[Any, ...]:
        """Run ``gpukb.rnn_vjp`` on this backend: ``(rnn's result, pullback)``, plus the
        residuals with ``return_residuals`` (``gpukb._vjp.residuals``); with ``recompute`` the
        pullback keeps only the arguments and outputs (``run_vjp_plan_recomputing``)."""
        from ._vjp.recompute import check_flags

        check_flags(return_residuals, recompute)
        call, plan, given = self._vjp_call(step_function, inputs, initial_states, options,
                                           "gpukb.rnn_vjp")
        if recompute:
            return self.run_vjp_plan_recomputing(plan, call, given)
        result, pullback = self.run_vjp_plan(plan, call, given)
        if not return_residuals:
            return result, pullback
        from ._vjp.residuals import residuals_of

        return result, pullback, residuals_of(self, plan, call, pullback)

    def rnn_pullback(self, residuals: Any, step_function: Callable[[Any, Any], Any], inputs: Any,
                     initial_states: list[Any] | tuple[Any, ...], **options: Any) -> Any:
        """Run ``gpukb.rnn_pullback`` on this backend: the call's pullback from residuals."""
        from ._vjp.residuals import rebuild

        call, plan, given = self._vjp_call(step_function, inputs, initial_states, options,
                                           "gpukb.rnn_pullback")
        return rebuild(self, plan, call, given, residuals)

    def rnn_residual_specs(self, step_function: Callable[[Any, Any], Any], inputs: Any,
                           initial_states: list[Any] | tuple[Any, ...],
                           **options: Any) -> tuple[Any, ...]:
        """Run ``gpukb.rnn_residual_specs`` on this backend (validates, computes nothing)."""
        from ._vjp.residuals import specs_of

        call, plan, _ = self._vjp_call(step_function, inputs, initial_states, options, None)
        return specs_of(self, plan, call)

    def vjp_residuals(self, plan: Plan, call: RnnCall) -> Any:
        """How the pullback of vjp ``plan`` is rebuilt from residuals: ``(specs, rebuild)``,
        ``specs`` the ``(shape, dtype)`` of each array that the plan's backward keeps (its
        ``backward.residuals``), ``rebuild(residuals)`` returning ``(arrays shaped like rnn's
        result, backward)``; or None (the default): the plan keeps no residuals, and a pullback
        rebuilt by ``rnn_pullback`` runs the vjp's forward again."""
        return None

    def _vjp_call(self, step_function: Callable[[Any, Any], Any], inputs: Any,
                  initial_states: Any, options: dict, log_as: str | None) -> tuple:
        """``(call, vjp plan, (inputs, initial_states) as given)``, checked, nothing run."""
        import optree

        from ._plan import log_plan
        from ._vjp.generic import step_vjp

        given = (inputs, initial_states)
        if isinstance(step_function, Cell):   # as in rnn: the cell on our arrays, in its dtype
            step_function = step_function.converted(self.namespace(optree.tree_leaves(inputs)).asarray)
            inputs, initial_states = step_function.cast_rnn_arguments(inputs, initial_states)
        call = self.prepare(step_function, inputs, initial_states, **options)
        step_vjp(call.step_function)   # a step without a derivative: TypeError, before any step
        plan = self.plan_vjp(call)
        if log_as is not None:
            log_plan(plan, call, log_as)
        return call, plan, given

    def plan_vjp(self, call: RnnCall) -> Plan:
        """Decide how ``rnn_vjp`` runs ``call``. The default offers it to ``fused_rnn_vjp`` when
        the backend overrides it, else takes the generic path: the forward as ``plan`` decides,
        the backward through the step's derivative in the generic reverse loop."""
        from ._plan import FUSED_RNN_VJP, Plan

        if type(self).fused_rnn_vjp is not Backend.fused_rnn_vjp:
            return Plan(self.name, FUSED_RNN_VJP, "offered to the backend's fused_rnn_vjp (the "
                                                  "generic path runs it if that returns "
                                                  "NotImplemented)")
        return self.generic_vjp_plan(call)

    def generic_vjp_plan(self, call: RnnCall) -> Plan:
        """The vjp plan of the generic path (forward as ``plan`` decides)."""
        from ._plan import GENERIC, Plan

        return Plan(self.name, GENERIC, "the step's derivative in the generic reverse loop; "
                                        f"forward on the {self.plan(call).path} path")

    def run_vjp_plan(self, plan: Plan, call: RnnCall, given: tuple) -> tuple[Any, Any]:
        """Run ``call`` as the vjp ``plan`` says: ``fused_rnn_vjp`` unless the plan is generic
        (or it returns NotImplemented); ``given``: ``(inputs, initial_states)`` as passed."""
        from ._plan import GENERIC, Plan, log_plan
        from ._vjp.generic import generic_vjp
        from ._vjp.pullback import Pullback

        if plan.path != GENERIC:
            fused = self.fused_rnn_vjp(call)
            if fused is not NotImplemented:
                result, backward = fused
                return result, Pullback(call, result, backward, given)
            log_plan(Plan(self.name, GENERIC, "fused_rnn_vjp returned NotImplemented", plan.path),
                     call, "gpukb.rnn_vjp")
        return generic_vjp(self, self.plan(call), call, given)

    def run_vjp_plan_recomputing(self, plan: Plan, call: RnnCall,
                                 given: tuple) -> tuple[Any, Any]:
        """``run_vjp_plan`` for ``rnn_vjp(..., recompute=True)``: ``(rnn's result, pullback)``
        whose pullback keeps at most the call's arguments and every step's output, and runs the
        forward again for the rest; the same values and gradients as ``run_vjp_plan``'s. The
        default: a generic plan drops its tape and records it again in each pullback call (one
        more forward); any other plan runs ``run_vjp_plan`` now for the values, drops its
        pullback, and runs it again in each pullback call (``gpukb._vjp.recompute.replay``: one
        more vjp forward). Override to keep less for a fused plan (the cpu backend's cells)."""
        from ._plan import GENERIC
        from ._vjp.generic import generic_vjp
        from ._vjp.recompute import replay

        if plan.path == GENERIC:
            return generic_vjp(self, self.plan(call), call, given, recompute=True)
        return replay(self, plan, call, given)

    def fused_rnn_vjp(self, call: RnnCall) -> Any:
        """The forward and backward of a validated ``RnnCall`` with fused kernels, or
        NotImplemented to let the generic path run it.

        Returns ``(result, backward)``: ``result`` is ``(last_output, outputs, new_states)``,
        exactly ``rnn``'s for the call; ``backward(d_out, d_last, d_states)`` receives the
        checked cotangents as lists of leaves (``outputs``', ``last_output``'s, the new states'
        in ``initial_states``' order; zeros where the user gave None) and returns a
        ``gpukb._vjp.Grads`` (``inputs``, ``initial_states``, ``constants``, ``weights``)."""
        return NotImplemented

    # -- session ------------------------------------------------------------------------------

    def on_clear_session(self) -> bool | None:
        """Release what the backend caches (memory pools, compiled kernels). Return False when
        there was nothing to release: if every backend does, ``clear_session`` skips its
        ``gc.collect()``. True or None (an override that does not say) keeps the collection."""
        return False

    def __repr__(self) -> str:
        return f"<gpukb backend {self.name!r} accepting {', '.join(self.array_types) or 'nothing'}>"


def resolve_array_type(spec: str) -> type | None:
    """The class named by ``"module:QualName"`` if its module is already imported, else None.

    An array of a library that was never imported cannot exist, so nothing is imported here.
    """
    module_name, _, qualname = spec.partition(":")
    module = sys.modules.get(module_name)
    if module is None:
        return None
    obj: Any = module
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj if isinstance(obj, type) else None
