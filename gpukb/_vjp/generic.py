"""The generic vjp of ``rnn``: any step that carries its derivative, on any backend's arrays.

Forward: the backend's own plan for the call (so the values are ``gpukb.rnn``'s, bitwise). When
that plan is the generic loop, the loop runs the step's vjp instead of the step and keeps each
step's pullback (a tape); otherwise the pullback first replays the generic loop to record one.

With ``recompute`` (``rnn_vjp(..., recompute=True)``) no tape outlives the forward: the values
come from the same loop (the vjp's, when the plan is generic) with each step's pullback dropped,
and each pullback call records the tape again and drops it when it returns.

Backward (docs/semantics.md, "Gradients"), processing steps in reverse, per sample:

- the output cotangent of step i is ``d_outputs``' slot i (plus ``d_last_output`` at the last
  step; without ``return_all_outputs`` only the last step has one), plus what a later masked step
  handed back;
- at a valid step the step's pullback gets the output cotangent and the cotangent of the new
  states; at a masked step it gets zeros: the state cotangent passes to the previous step
  unchanged, and the output cotangent passes to the previous step's output when
  ``zero_output_for_mask`` is False (the masked output repeated it) and is dropped otherwise.

The step protocol (README, "Gradients"): ``step_function.vjp(step_input, states)`` returns
``((output, new_states), step_pullback)`` with the step's own values, and
``step_pullback(d_output, d_new_states)`` returns ``(d_step_input, d_states)`` or
``(d_step_input, d_states, d_weights)``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import optree

from .._rnn import RnnCall, run_generic
from ..cells import Cell
from .cell_steps import cell_step_vjp
from .cotangents import Grads, differentiable


def step_vjp(step_function: Any) -> Callable:
    """The function that gives a step's values and pullback (see the module docstring), or a
    TypeError saying what is missing."""
    if isinstance(step_function, Cell):
        return cell_step_vjp(step_function)
    vjp = getattr(step_function, "vjp", None)
    if vjp is None:
        raise TypeError(
            f"rnn_vjp: step_function {_name(step_function)} carries no derivative: it needs a "
            "callable attribute vjp(step_input, states) -> ((output, new_states), step_pullback), "
            "or use a gpukb.cells cell (see the README's Gradients section)."
        )
    if not callable(vjp):
        raise TypeError(f"rnn_vjp: step_function.vjp must be callable, got {type(vjp).__name__}.")
    return vjp


def _name(step_function: Any) -> str:
    return getattr(step_function, "__qualname__", None) or type(step_function).__name__


class _Recorder:
    """The step the generic loop calls while recording: the vjp's values; keeps its pullback
    (unless ``keep`` is False: the values alone, for a recomputing forward)."""

    def __init__(self, vjp: Callable, keep: bool = True):
        self.vjp = vjp
        self.keep = keep
        self.pullbacks: list = []

    def __call__(self, step_input, states):
        result = self.vjp(step_input, states)
        if (not isinstance(result, (list, tuple)) or len(result) != 2
                or not callable(result[1])):
            raise TypeError(
                "rnn_vjp: step_function.vjp must return ((output, new_states), step_pullback) "
                f"with a callable step_pullback, got {type(result).__name__}."
            )
        if self.keep:
            self.pullbacks.append(result[1])
        return result[0]


def record(call: RnnCall, keep: bool = True) -> tuple[tuple, list]:
    """Run the generic loop on the step's vjp: ``(rnn's result, the steps' pullbacks)`` (none
    when not ``keep``)."""
    recorder = _Recorder(step_vjp(call.step_function), keep)
    result = run_generic(dataclasses.replace(call, step_function=recorder))
    return result, recorder.pullbacks


def forward(backend: Any, plan: Any, call: RnnCall, keep: bool = True) -> tuple[tuple, list | None]:
    """The forward values as ``backend`` runs ``plan``, and the tape when the generic loop ran
    (with ``keep``; an empty one without)."""
    from .._plan import GENERIC

    if plan.path == GENERIC:
        return record(call, keep)
    return backend.run_plan(plan, call), None


class Reverse:
    """The reverse loop over a tape of step pullbacks, and the gradients it sums."""

    def __init__(self, call: RnnCall, pullbacks: list, out_treespec: Any):
        self.call = call
        self.pullbacks = pullbacks
        self.out_treespec = out_treespec

    def run(self, d_out: list, d_last: list, d_states: list) -> Grads:
        call, xp = self.call, self.call.xp
        steps = call.time_steps
        mask = call.step_mask
        carry_outputs = mask is not None and not call.zero_output_for_mask
        d_inputs = [xp.zeros(tuple(x.shape), dtype=x.dtype) if differentiable(x) else None
                    for x in call.input_leaves]
        constants: Any = call.constants
        const_leaves, const_treespec = optree.tree_flatten(constants)
        d_consts = [xp.zeros(tuple(c.shape), dtype=c.dtype) if differentiable(c) else None
                    for c in const_leaves]
        d_weights: dict = {}
        gs = list(d_states)
        carry = None
        for i in reversed(range(steps)):
            t = call.original_time(i)
            gy = self._output_cotangent(i, d_out, d_last)
            if carry is not None:
                gy = [g + c for g, c in zip(gy, carry)]
            if mask is None:
                go, g_new, g_keep = gy, gs, None
            else:
                valid = mask[t]
                go = [_where(xp, valid, g, None) for g in gy]
                carry = [_where(xp, valid, None, g) for g in gy] if carry_outputs else None
                g_new = [_where(xp, valid, g, None) for g in gs]
                g_keep = [_where(xp, valid, None, g) for g in gs]
            d_x, d_s, d_c, d_w = self._step_back(i, go, g_new)
            gs = d_s if g_keep is None else [a + b for a, b in zip(g_keep, d_s)]
            for buffer, g in zip(d_inputs, d_x):
                if buffer is not None and g is not None:
                    if call.time_major:
                        buffer[t] = g
                    else:
                        buffer[:, t] = g
            for k, g in enumerate(d_c):
                if d_consts[k] is not None and g is not None:
                    d_consts[k] = d_consts[k] + g
            for name, g in d_w.items():
                d_weights[name] = g if name not in d_weights else d_weights[name] + g
        return Grads(
            inputs=optree.tree_unflatten(call.input_treespec, d_inputs),
            initial_states=call.pack_states(gs),
            constants=optree.tree_unflatten(const_treespec, d_consts) if call.constants else None,
            weights=d_weights,
        )

    def _output_cotangent(self, i: int, d_out: list, d_last: list) -> list:
        call = self.call
        last = i == call.time_steps - 1
        if call.return_all_outputs:
            gy = [g[i] if call.time_major else g[:, i] for g in d_out]
        elif last:
            gy = [g[0] if call.time_major else g[:, 0] for g in d_out]
        else:
            return [call.xp.zeros_like(g[0] if call.time_major else g[:, 0]) for g in d_out]
        return [a + b for a, b in zip(gy, d_last)] if last else gy

    def _step_back(self, i: int, go: list, g_new: list) -> tuple[list, list, list, dict]:
        """Call step i's pullback; return its input, state, constant and weight cotangents as
        leaves (None for an input or constant leaf it left out; zeros for a state's)."""
        call = self.call
        result = self.pullbacks[i](optree.tree_unflatten(self.out_treespec, go),
                                   call.pack_states(g_new))
        if not isinstance(result, (list, tuple)) or len(result) not in (2, 3):
            raise TypeError(
                "rnn_vjp: a step_pullback must return (d_step_input, d_states) or "
                f"(d_step_input, d_states, d_weights), got {type(result).__name__}."
            )
        d_x = _leaves_like("d_step_input", result[0], call.input_leaves)
        d_states = result[1]
        items = tuple(call.initial_states) + call.constants
        if not isinstance(d_states, (list, tuple)) or len(d_states) != len(items):
            raise ValueError(
                f"rnn_vjp: a step_pullback's d_states must be a list or tuple with one item per "
                f"item of states ({len(items)}: the states, then the constants), got "
                f"{_describe(d_states)}."
            )
        leaves: list = []
        for index, (item, primal) in enumerate(zip(d_states, items)):
            leaves += _leaves_like(f"d_states[{index}]", item, optree.tree_leaves(primal))
        n_states = len(call.state_leaves)
        state_leaves = [g if g is not None else call.xp.zeros_like(s)
                        for g, s in zip(leaves[:n_states], g_new)]
        d_w = result[2] if len(result) == 3 else {}
        if d_w is None:
            d_w = {}
        if not isinstance(d_w, dict):
            raise TypeError(f"rnn_vjp: a step_pullback's d_weights must be a dict, got {type(d_w).__name__}.")
        return d_x, state_leaves, leaves[n_states:], d_w


def _describe(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return f"a {type(value).__name__} of {len(value)}"
    return type(value).__name__


def _leaves_like(name: str, given: Any, primal_leaves: list) -> list:
    """The leaves of a step's cotangent ``given`` for ``primal_leaves``; None stands for zeros,
    for the whole item or any leaf of it."""
    if given is None:
        return [None] * len(primal_leaves)
    leaves = optree.tree_leaves(given, none_is_leaf=True)
    if len(leaves) != len(primal_leaves):
        raise ValueError(
            f"rnn_vjp: a step_pullback's {name} has {len(leaves)} leaves but the step's argument "
            f"has {len(primal_leaves)}."
        )
    return leaves


def _where(xp: Any, valid: Any, a: Any, b: Any) -> Any:
    """Per sample: ``a`` where the step is valid, else ``b`` (None: zeros)."""
    like = a if a is not None else b
    keep = valid.reshape((valid.shape[0],) + (1,) * (like.ndim - 1))
    zeros = xp.zeros_like(like)
    return xp.where(keep, zeros if a is None else a, zeros if b is None else b)


def generic_vjp(backend: Any, plan: Any, call: RnnCall, given: tuple,
                recompute: bool = False) -> tuple[tuple, Any]:
    """``(rnn's result, pullback)`` on the generic path (see the module docstring). With
    ``recompute`` the tape is never kept: each pullback call records it again (one more forward
    through the step's vjp) and drops it when it returns."""
    from .pullback import Pullback

    result, tape = forward(backend, plan, call, keep=not recompute)
    pullbacks: list = [] if tape is None else tape

    def backward(d_out: list, d_last: list, d_states: list) -> Grads:
        tape = pullbacks
        if not tape:   # the forward kept no tape (a fused kernel ran it, or recompute): record
            tape = record(call)[1]
            if not recompute:   # kept for the next call
                pullbacks.extend(tape)
        return Reverse(call, tape, pullback.out_treespec).run(d_out, d_last, d_states)

    pullback = Pullback(call, result, backward, given)
    return result, pullback
