"""Hypothesis strategies that generate random rnn problems (needs the ``test`` extra).

``rnn_problems()`` draws an ``RnnProblem``: nested inputs (array, list, tuple, dict, mixed) of rank
3 or 4, nested states of rank 2 or 3 in a list or tuple, nested outputs of rank 1 to 3, constants,
every flag, and a mask of one of ``MASK_KINDS``. Its step function, a ``RandomCell``, is a fixed
deterministic cell in plain NumPy (tanh of a random linear map of inputs, states and constants),
so the core, the reference and any backend given NumPy arrays can all run it. Array values come
from a drawn seed, so hypothesis shrinks the structure while values stay reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optree
from hypothesis import strategies as st

MASK_KINDS = (
    "none",
    "all_true",
    "random",
    "right_padded",
    "left_padded",
    "all_masked_row",
    "first_step_masked",
    "input_length",
    "input_length_int",
    "mask_and_input_length",
)


class _Shape:
    """Leaf placeholder in a structure template (a tuple would be a pytree node to optree)."""

    def __init__(self, dims):
        self.dims = tuple(dims)

    def __repr__(self):
        return f"_Shape{self.dims}"


class RandomCell:
    """A deterministic step ``(x, states) -> (output, new_states)`` on plain NumPy arrays.

    ``z = tanh([x, states, constants] @ W + b)``; each new state is ``0.5 * (tanh(z @ P_k) + s_k)``
    in the state's dtype; each output leaf is ``z @ Q_k`` in the input dtype. It asserts the
    contract it relies on (states a tuple of states + constants, input structure) and counts calls.
    """

    def __init__(self, *, input_spec, state_template, output_template, n_constants,
                 in_width, const_width, hidden, seed, states_as_tuple):
        rng = np.random.default_rng(seed)
        self.input_spec = input_spec
        self.state_template = state_template
        self.output_template = output_template
        self.n_states = len(state_template)
        self.n_constants = n_constants
        self.states_as_tuple = states_as_tuple
        state_dims = [s.dims for s in optree.tree_leaves(state_template)]
        width = in_width + sum(int(np.prod(d)) for d in state_dims) + const_width
        self.w = rng.standard_normal((width, hidden)) / np.sqrt(width)
        self.b = 0.1 * rng.standard_normal(hidden)
        self.p = [rng.standard_normal((hidden, int(np.prod(d)))) for d in state_dims]
        out_dims = [s.dims for s in optree.tree_leaves(output_template)]
        self.q = [rng.standard_normal((hidden, int(np.prod(d)))) for d in out_dims]
        self.calls = 0

    def __call__(self, x, states):
        self.calls += 1
        assert isinstance(states, tuple), f"states must be a tuple, got {type(states)}"
        assert len(states) == self.n_states + self.n_constants, (len(states), self.n_states, self.n_constants)
        x_leaves, x_spec = optree.tree_flatten(x)
        assert x_spec == self.input_spec, (x_spec, self.input_spec)
        dtype = x_leaves[0].dtype
        batch = x_leaves[0].shape[0]
        current = optree.tree_leaves(tuple(states[: self.n_states]))
        consts = optree.tree_leaves(tuple(states[self.n_states:]))
        # An explicit width, not -1: NumPy cannot infer -1 for an empty batch, on which a backend
        # may probe the step (see gpukb.testing.conformance.BackendStep).
        parts = [a.reshape(batch, int(np.prod(a.shape[1:]))).astype(dtype) for a in x_leaves + current + consts]
        z = np.concatenate(parts, axis=1) if parts else np.zeros((batch, 0), dtype)
        z = np.tanh(z @ self.w.astype(dtype) + self.b.astype(dtype))
        new_leaves = [
            (0.5 * (np.tanh(z @ p.astype(dtype)).reshape(s.shape) + s)).astype(s.dtype)
            for p, s in zip(self.p, current)
        ]
        out_leaves = [
            (z @ q.astype(dtype)).reshape((batch,) + s.dims)
            for q, s in zip(self.q, optree.tree_leaves(self.output_template))
        ]
        output = optree.tree_unflatten(optree.tree_structure(self.output_template), out_leaves)
        new_states = optree.tree_unflatten(optree.tree_structure(self.state_template), new_leaves)
        if self.states_as_tuple:  # tf.keras accepts a tuple for a list of states (and vice versa)
            new_states = tuple(new_states)
        return output, new_states


@dataclass
class RnnProblem:
    """One rnn call: ``problem.kwargs()`` are the arguments of ``rnn`` (without ``xp``)."""

    step_function: RandomCell
    inputs: Any
    initial_states: Any
    options: dict = field(default_factory=dict)
    dtype: Any = np.float64
    mask_kind: str = "none"

    def kwargs(self) -> dict:
        return dict(step_function=self.step_function, inputs=self.inputs,
                    initial_states=self.initial_states, **self.options)

    @property
    def time_steps(self) -> int:
        leaf = optree.tree_leaves(self.inputs)[0]
        return leaf.shape[0] if self.options.get("time_major") else leaf.shape[1]


def _nest(leaf, max_leaves=3):
    """A leaf, or lists / tuples / dicts (keys out of sorted order on purpose) of nests."""
    keys = st.sampled_from(["z", "b", "a", "m"])
    return st.recursive(
        leaf,
        lambda children: st.one_of(
            st.lists(children, min_size=1, max_size=2),
            st.lists(children, min_size=1, max_size=2).map(tuple),
            st.dictionaries(keys, children, min_size=1, max_size=2),
        ),
        max_leaves=max_leaves,
    )


def _feature_shapes(min_rank, max_rank):
    return st.lists(st.integers(1, 3), min_size=min_rank, max_size=max_rank).map(_Shape)


def _valid_table(draw, kind, batch, steps, go_backwards):
    """``valid[b, t]`` in original time order for the mask kinds that use a mask array."""
    if kind == "all_true":
        return np.ones((batch, steps), bool)
    lengths = np.array(draw(st.lists(st.integers(0, steps), min_size=batch, max_size=batch)))
    times = np.arange(steps)
    if kind == "right_padded":
        return times[None, :] < lengths[:, None]
    if kind == "left_padded":
        return times[None, :] >= steps - lengths[:, None]
    flat = draw(st.lists(st.booleans(), min_size=batch * steps, max_size=batch * steps))
    valid = np.array(flat, bool).reshape(batch, steps)
    if kind == "all_masked_row":
        valid[draw(st.integers(0, batch - 1))] = False
    elif kind == "first_step_masked":
        valid[:, steps - 1 if go_backwards else 0] = False
    return valid


@st.composite
def rnn_problems(draw, dtypes=(np.float64, np.float32), max_batch=4, max_steps=6,
                 mask_kinds=MASK_KINDS):
    """Random valid rnn problems with every flag and mask kind; see the module docstring."""
    dtype = np.dtype(draw(st.sampled_from(dtypes)))
    batch = draw(st.integers(1, max_batch))
    steps = draw(st.integers(1, max_steps))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    go_backwards = draw(st.booleans())
    time_major = draw(st.booleans())

    input_template = draw(_nest(_feature_shapes(1, 2)))
    state_items = draw(st.lists(_nest(_feature_shapes(1, 2), max_leaves=2), min_size=0, max_size=3))
    state_template = tuple(state_items) if draw(st.booleans()) else list(state_items)
    output_template = draw(_nest(_feature_shapes(0, 2)))
    n_constants = draw(st.integers(0, 2))
    const_widths = [draw(st.integers(1, 3)) for _ in range(n_constants)]

    def make_input(s):
        shape = (steps, batch) + s.dims if time_major else (batch, steps) + s.dims
        return rng.standard_normal(shape).astype(dtype)

    inputs = optree.tree_map(make_input, input_template)
    initial_states = optree.tree_map(
        lambda s: rng.standard_normal((batch,) + s.dims).astype(dtype), state_template
    )
    constants = [rng.standard_normal((batch, w)).astype(dtype) for w in const_widths]
    input_spec = optree.tree_structure(optree.tree_map(lambda s: 0, input_template))
    in_width = sum(int(np.prod(s.dims)) for s in optree.tree_leaves(input_template))
    cell = RandomCell(
        input_spec=input_spec, state_template=state_template, output_template=output_template,
        n_constants=n_constants, in_width=in_width, const_width=sum(const_widths),
        hidden=draw(st.integers(1, 4)), seed=seed, states_as_tuple=draw(st.booleans()),
    )

    options = dict(
        go_backwards=go_backwards,
        unroll=draw(st.booleans()),
        time_major=time_major,
        zero_output_for_mask=draw(st.booleans()),
        return_all_outputs=draw(st.booleans()),
    )
    if n_constants or draw(st.booleans()):
        options["constants"] = constants if draw(st.booleans()) else tuple(constants)

    kind = draw(st.sampled_from(mask_kinds))
    if kind == "input_length_int":
        options["input_length"] = steps
    elif kind == "input_length":
        lengths = draw(st.lists(st.integers(0, steps), min_size=batch, max_size=batch))
        options["input_length"] = np.array(lengths, dtype=draw(st.sampled_from([np.int64, np.int32])))
    elif kind != "none":
        table_kind = "random" if kind == "mask_and_input_length" else kind
        valid = _valid_table(draw, table_kind, batch, steps, go_backwards)
        mask = valid.T if time_major else valid
        mask_dtype = draw(st.sampled_from([bool, np.int32, np.float32]))
        mask = mask.astype(mask_dtype)
        if mask_dtype is not bool and draw(st.booleans()):
            mask = mask * 3  # any nonzero value keeps the step
        if draw(st.booleans()):
            mask = mask[..., None]
        options["mask"] = mask
        if kind == "mask_and_input_length":  # the mask wins; lengths deliberately disagree
            options["input_length"] = np.array(
                draw(st.lists(st.integers(0, steps), min_size=batch, max_size=batch)), dtype=np.int64
            )
    return RnnProblem(step_function=cell, inputs=inputs, initial_states=initial_states,
                      options=options, dtype=dtype, mask_kind=kind)
