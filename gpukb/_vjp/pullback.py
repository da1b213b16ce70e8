"""``Pullback``: the function ``rnn_vjp`` returns, the same for every vjp path.

It checks its cotangents against the forward result (``cotangents``), hands their leaves to the
path's backward function, and gives the gradients of the arguments as the user passed them: a
cell casts floating inputs and states to its dtype (``Cell.cast_rnn_arguments``), and their
gradients are cast back to the dtypes given.
"""

from __future__ import annotations

from typing import Any, Callable

import optree

from .._rnn import RnnCall
from .cotangents import Grads, check_leaves, check_state_cotangents


class Pullback:
    """``pullback(d_outputs, d_last_output=None, d_new_states=None) -> Grads``.

    ``backward(d_out, d_last, d_states)`` (leaves, zeros where a cotangent was None) computes the
    gradients; it may be called any number of times.
    """

    def __init__(self, call: RnnCall, result: tuple, backward: Callable, given: tuple):
        self._call = call
        self._backward = backward
        last, outputs, new_states = result
        self._out_leaves, self._out_treespec = optree.tree_flatten(outputs)
        self._last_leaves, self._last_treespec = optree.tree_flatten(last)
        self._state_leaves = optree.tree_leaves(new_states)
        self._given = given   # (inputs, initial_states) as passed, before a cell's casts

    @property
    def out_treespec(self) -> Any:
        return self._out_treespec

    @property
    def backward(self) -> Callable:
        """The path's ``backward(d_out, d_last, d_states)`` on checked leaves (what ``recompute``'s
        replay calls on a pullback it builds again)."""
        return self._backward

    @property
    def residuals(self) -> tuple | None:
        """The arrays the backward keeps beyond the call's arguments (``backward.residuals``;
        None when it says nothing: see ``residuals``)."""
        return getattr(self._backward, "residuals", None)

    def __call__(self, d_outputs: Any, d_last_output: Any = None,
                 d_new_states: Any = None) -> Grads:
        xp = self._call.xp
        d_out = check_leaves("d_outputs", d_outputs, self._out_leaves, self._out_treespec, xp)
        d_last = check_leaves("d_last_output", d_last_output, self._last_leaves,
                              self._last_treespec, xp)
        d_states = check_state_cotangents(d_new_states, self._call, self._state_leaves)
        grads = self._backward(d_out, d_last, d_states)
        inputs, initial_states = self._given
        return Grads(inputs=_dtypes_of(grads.inputs, inputs),
                     initial_states=_dtypes_of(grads.initial_states, initial_states),
                     constants=grads.constants, weights=grads.weights)


def _dtypes_of(grads: Any, given: Any) -> Any:
    """``grads`` with each leaf in the dtype of the argument's leaf (a cell's cast undone)."""
    leaves, treespec = optree.tree_flatten(grads, none_is_leaf=True)
    given_leaves = optree.tree_leaves(given)
    if len(leaves) != len(given_leaves):
        return grads
    cast = [g if g is None or g.dtype == a.dtype else g.astype(a.dtype)
            for g, a in zip(leaves, given_leaves)]
    return optree.tree_unflatten(treespec, cast)
