"""``gpukb.rnn``: picks the backend for the call's arrays and hands the call to it."""

from __future__ import annotations

from typing import Any, Callable

from . import _dispatch


def _array_leaves(*trees):
    import optree

    leaves = []
    for tree in trees:
        if tree is not None:
            leaves.extend(optree.tree_leaves(tree))
    return leaves


def rnn(step_function: Callable[[Any, Any], Any], inputs: Any,
        initial_states: list[Any] | tuple[Any, ...], go_backwards: bool = False, mask: Any = None,
        constants: list[Any] | tuple[Any, ...] | None = None, unroll: bool = False,
        input_length: Any = None, time_major: bool = False, zero_output_for_mask: bool = False,
        return_all_outputs: bool = True, *, backend: str | None = None) -> tuple[Any, Any, Any]:
    """Iterate ``step_function`` over the time axis of ``inputs`` (Keras ``backend.rnn``).

    ``step_function(step_input, states) -> (output, new_states)``, where ``states`` is a tuple of
    the current states followed by ``constants``. Returns ``(last_output, outputs, new_states)``
    in the inputs' array type. ``backend`` names the backend to use (default: chosen by the
    dispatcher from the arrays; see the README). Semantics: tf.keras, as documented in the README.
    """
    leaves = _array_leaves(inputs, initial_states, mask, constants, input_length)
    chosen = _dispatch.select_backend(leaves, backend)
    return chosen.rnn(
        step_function, inputs, initial_states, go_backwards=go_backwards, mask=mask,
        constants=constants, unroll=unroll, input_length=input_length, time_major=time_major,
        zero_output_for_mask=zero_output_for_mask, return_all_outputs=return_all_outputs,
    )
