"""``gpukb.rnn``: picks the backend for the call's arrays and hands the call to it; and
``gpukb.rnn_vjp``'s entry, which loads the gradient code (``gpukb._vjp``, with optree) on its
first call, not at ``import gpukb``."""

from __future__ import annotations

from typing import Any, Callable

import numpy

from . import _dispatch


def _array_leaves(*trees):
    import optree

    leaves = []
    for tree in trees:
        if tree is None:
            continue
        if type(tree) is numpy.ndarray:  # a leaf for optree: no flattening needed
            leaves.append(tree)
        elif (type(tree) is list or type(tree) is tuple) and all(
                type(leaf) is numpy.ndarray for leaf in tree):   # a flat list of states
            leaves.extend(tree)
        else:
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


def rnn_vjp(step_function: Callable[[Any, Any], Any], inputs: Any,
            initial_states: list[Any] | tuple[Any, ...], go_backwards: bool = False,
            mask: Any = None, constants: list[Any] | tuple[Any, ...] | None = None,
            unroll: bool = False, input_length: Any = None, time_major: bool = False,
            zero_output_for_mask: bool = False, return_all_outputs: bool = True, *,
            backend: str | None = None, return_residuals: bool = False,
            recompute: bool = False) -> tuple[Any, ...]:
    """``gpukb.rnn`` and its pullback: ``((last_output, outputs, new_states), pullback)``.

    The values are ``gpukb.rnn``'s for the same call. ``pullback(d_outputs, d_last_output=None,
    d_new_states=None)`` returns the gradients (``.inputs``, ``.initial_states``, ``.constants``,
    ``.weights``) of ``sum(d * value)`` over the results; cotangents left as None are zeros.
    ``step_function`` is a ``gpukb.cells`` cell, or carries its derivative as ``.vjp`` (the
    README's Gradients section); the rules under masks and every flag are in docs/semantics.md.
    With ``return_residuals``: ``(result, pullback, residuals)``, ``residuals`` the tuple of
    arrays the pullback keeps beyond the arguments, from which ``gpukb.rnn_pullback`` rebuilds it.
    With ``recompute``: the pullback keeps at most the arguments and every step's output, and each
    of its calls runs the forward again for the rest (the same values and gradients, bitwise; the
    cuda backend's fused cells keep only those already, so there it changes nothing; see the
    README's Gradients section). ``return_residuals`` and ``recompute`` together are a
    ValueError (a recomputing pullback has no residuals); a flag that is not a bool a TypeError.
    """
    # The signature and docstring are gpukb._vjp.frontend.rnn_vjp's (a test holds them equal).
    from ._vjp.frontend import rnn_vjp as run

    return run(step_function, inputs, initial_states, go_backwards=go_backwards, mask=mask,
               constants=constants, unroll=unroll, input_length=input_length,
               time_major=time_major, zero_output_for_mask=zero_output_for_mask,
               return_all_outputs=return_all_outputs, backend=backend,
               return_residuals=return_residuals, recompute=recompute)


def rnn_pullback(residuals: tuple[Any, ...], step_function: Callable[[Any, Any], Any],
                 inputs: Any, initial_states: list[Any] | tuple[Any, ...],
                 go_backwards: bool = False, mask: Any = None,
                 constants: list[Any] | tuple[Any, ...] | None = None, unroll: bool = False,
                 input_length: Any = None, time_major: bool = False,
                 zero_output_for_mask: bool = False, return_all_outputs: bool = True, *,
                 backend: str | None = None) -> Callable[..., Any]:
    """The pullback of ``rnn_vjp`` for this call, from the ``residuals`` that
    ``rnn_vjp(..., return_residuals=True)`` returned for it (the same arguments, the same backend):
    its gradients are bitwise those of the pullback ``rnn_vjp`` returned. A fused cell call's
    pullback runs nothing forward; a call whose residuals are ``()`` (the generic path) runs the
    forward again. Residuals of the wrong count, array type, shape or dtype are a TypeError or
    ValueError before any work (docs/semantics.md, "Gradients")."""
    # The signature and docstring are gpukb._vjp.frontend.rnn_pullback's.
    from ._vjp.frontend import rnn_pullback as run

    return run(residuals, step_function, inputs, initial_states, go_backwards=go_backwards,
               mask=mask, constants=constants, unroll=unroll, input_length=input_length,
               time_major=time_major, zero_output_for_mask=zero_output_for_mask,
               return_all_outputs=return_all_outputs, backend=backend)


def rnn_residual_specs(step_function: Callable[[Any, Any], Any], inputs: Any,
                       initial_states: list[Any] | tuple[Any, ...], go_backwards: bool = False,
                       mask: Any = None, constants: list[Any] | tuple[Any, ...] | None = None,
                       unroll: bool = False, input_length: Any = None, time_major: bool = False,
                       zero_output_for_mask: bool = False, return_all_outputs: bool = True, *,
                       backend: str | None = None) -> tuple[tuple[tuple[int, ...], Any], ...]:
    """The ``(shape, numpy dtype)`` of each residual ``rnn_vjp(..., return_residuals=True)`` returns
    for this call, without running it (for a framework that must declare its outputs' shapes,
    such as a PyTorch fake kernel)."""
    # The signature and docstring are gpukb._vjp.frontend.rnn_residual_specs'.
    from ._vjp.frontend import rnn_residual_specs as run

    return run(step_function, inputs, initial_states, go_backwards=go_backwards, mask=mask,
               constants=constants, unroll=unroll, input_length=input_length,
               time_major=time_major, zero_output_for_mask=zero_output_for_mask,
               return_all_outputs=return_all_outputs, backend=backend)
