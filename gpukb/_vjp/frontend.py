"""``gpukb.rnn_vjp``: picks the backend for the call's arrays (as ``gpukb.rnn``) and hands the
call to its ``Backend.rnn_vjp``."""

from __future__ import annotations

from typing import Any, Callable

from .. import _dispatch
from .._frontend import _array_leaves


def rnn_vjp(step_function: Callable[[Any, Any], Any], inputs: Any,
            initial_states: list[Any] | tuple[Any, ...], go_backwards: bool = False,
            mask: Any = None, constants: list[Any] | tuple[Any, ...] | None = None,
            unroll: bool = False, input_length: Any = None, time_major: bool = False,
            zero_output_for_mask: bool = False, return_all_outputs: bool = True, *,
            backend: str | None = None) -> tuple[tuple[Any, Any, Any], Callable[..., Any]]:
    """``gpukb.rnn`` and its pullback: ``((last_output, outputs, new_states), pullback)``.

    The values are ``gpukb.rnn``'s for the same call. ``pullback(d_outputs, d_last_output=None,
    d_new_states=None)`` returns the gradients (``.inputs``, ``.initial_states``, ``.constants``,
    ``.weights``) of ``sum(d * value)`` over the results; cotangents left as None are zeros.
    ``step_function`` is a ``gpukb.cells`` cell, or carries its derivative as ``.vjp`` (the
    README's Gradients section); the rules under masks and every flag are in docs/semantics.md.
    """
    leaves = _array_leaves(inputs, initial_states, mask, constants, input_length)
    chosen = _dispatch.select_backend(leaves, backend)
    return chosen.rnn_vjp(
        step_function, inputs, initial_states, go_backwards=go_backwards, mask=mask,
        constants=constants, unroll=unroll, input_length=input_length, time_major=time_major,
        zero_output_for_mask=zero_output_for_mask, return_all_outputs=return_all_outputs,
    )
