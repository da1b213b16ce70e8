"""The pullback's side of ``rnn_vjp``: checking the cotangents it is given, and ``Grads``.

Every cotangent is checked against the forward result it belongs to before any backward work:
structure (list and tuple count as the same, as for rnn's states), array type and library, shape
and dtype. ``None`` anywhere a cotangent may be left out means zeros.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import optree

from .._dtypes import dtype_kind
from .._rnn import format_path


@dataclass(frozen=True, eq=False)  # eq=False: fields hold arrays
class Grads:
    """What ``pullback`` returns: the gradient of each differentiable argument of the call.

    ``inputs``, ``initial_states`` and ``constants`` have the structure of those arguments
    (``constants`` is None when the call had none); a leaf that is not a floating array (an
    integer input, a Python scalar constant) gets None. ``weights``: for a ``gpukb.cells`` cell,
    ``{"kernel", "recurrent_kernel", "bias"}`` (no ``"bias"`` without one); for a step function,
    the sums over steps of the weight gradients its pullback returned (``{}`` when none).
    """

    inputs: Any
    initial_states: Any
    constants: Any
    weights: dict


def _library(x: Any) -> str:
    return type(x).__module__.split(".")[0]


def _is_array(x: Any) -> bool:
    return hasattr(x, "shape") and hasattr(x, "dtype") and hasattr(x, "ndim")


def differentiable(leaf: Any) -> bool:
    """Whether a leaf of an argument gets a gradient: floating arrays only."""
    return _is_array(leaf) and dtype_kind(leaf.dtype) == "f"


def check_leaves(name: str, given: Any, like: list, like_treespec: Any, xp: Any) -> list:
    """The leaves of cotangent ``given`` (named ``name``) for the primal leaves ``like`` of
    structure ``like_treespec``, each checked; zeros where ``given`` is None."""
    if given is None:
        return [xp.zeros(tuple(leaf.shape), dtype=leaf.dtype) for leaf in like]
    paths, leaves, treespec = optree.tree_flatten_with_path(given)
    like_paths = optree.treespec_paths(like_treespec)
    if treespec != like_treespec and paths != like_paths:
        raise ValueError(
            f"rnn_vjp pullback: {name} must have the structure of the forward result it belongs "
            f"to, {like_treespec}; got {treespec}."
        )
    library = _library(like[0]) if like else ""
    for path, leaf, ref in zip(paths, leaves, like):
        where = format_path(name, path)
        if not _is_array(leaf):
            raise TypeError(f"rnn_vjp pullback: {where} must be an array, got {type(leaf).__name__}.")
        if _library(leaf) != library:
            raise TypeError(
                f"rnn_vjp pullback: {where} is a {type(leaf).__module__}.{type(leaf).__name__} but "
                f"the forward result is a {library} array."
            )
        if tuple(leaf.shape) != tuple(ref.shape):
            raise ValueError(
                f"rnn_vjp pullback: {where} must have the shape of the forward result, "
                f"{tuple(ref.shape)}; got {tuple(leaf.shape)}."
            )
        if leaf.dtype != ref.dtype:
            raise ValueError(
                f"rnn_vjp pullback: {where} must have the dtype of the forward result, "
                f"{ref.dtype}; got {leaf.dtype}."
            )
    return list(leaves)


def check_state_cotangents(given: Any, call: Any, final_leaves: list) -> list:
    """The leaves of ``d_new_states``: None, or a list/tuple with one item (None or the state's
    structure) per item of ``initial_states``; zeros for what is None."""
    xp = call.xp
    if given is None:
        return [xp.zeros(tuple(s.shape), dtype=s.dtype) for s in final_leaves]
    items = call.initial_states
    if not isinstance(given, (list, tuple)):
        raise TypeError(
            "rnn_vjp pullback: d_new_states must be None or a list or tuple like new_states, got "
            f"{type(given).__name__}."
        )
    if len(given) != len(items):
        raise ValueError(
            f"rnn_vjp pullback: d_new_states has {len(given)} item(s) but new_states has "
            f"{len(items)}."
        )
    leaves: list = []
    start = 0
    for index, (item, state) in enumerate(zip(given, items)):
        like_leaves, like_treespec = optree.tree_flatten(state)
        like = final_leaves[start:start + len(like_leaves)]
        start += len(like_leaves)
        leaves += check_leaves(f"d_new_states[{index}]", item, like, like_treespec, xp)
    return leaves
