"""A float64 NumPy reference of ``rnn``, written plainly from the spec for tests to compare with.

It shares no code with ``gpukb._rnn``: it works batch-major on float64 copies, builds a per-sample
``valid[b, t]`` table, runs the simplest loop (per-sample Python ``if`` for masking) and stacks the
outputs at the end. It does no argument checking beyond what it needs: feed it valid problems.
"""

from __future__ import annotations

import numpy as np
import optree


def _float64(x):
    x = np.asarray(x)
    return x.astype(np.float64) if x.dtype.kind in "fc" else x.copy()


def rnn_reference(
    step_function,
    inputs,
    initial_states,
    go_backwards=False,
    mask=None,
    constants=None,
    unroll=False,
    input_length=None,
    time_major=False,
    zero_output_for_mask=False,
    return_all_outputs=True,
):
    """``(last_output, outputs, new_states)`` per the spec, computed in float64."""
    del unroll  # a hint only: no effect on results
    input_leaves, input_spec = optree.tree_flatten(inputs)
    input_leaves = [_float64(x) for x in input_leaves]
    if time_major:
        input_leaves = [np.swapaxes(x, 0, 1) for x in input_leaves]
    batch, steps = input_leaves[0].shape[:2]

    valid = np.ones((batch, steps), dtype=bool)
    if mask is not None:
        m = np.asarray(mask) != 0
        m = m.reshape(m.shape[0], m.shape[1])
        valid = m.T if time_major else m
    elif input_length is not None and np.ndim(input_length) == 1:
        for b in range(batch):
            for t in range(steps):
                valid[b, t] = t < int(input_length[b])

    state_leaves, state_spec = optree.tree_flatten(initial_states)
    state_leaves = [_float64(s) for s in state_leaves]
    constants = tuple(optree.tree_map(_float64, tuple(constants or ())))

    order = range(steps - 1, -1, -1) if go_backwards else range(steps)
    collected = []  # output leaves of each processed step, after masking
    previous = None
    output_spec = None
    for t in order:
        x = optree.tree_unflatten(input_spec, [leaf[:, t] for leaf in input_leaves])
        states = optree.tree_unflatten(state_spec, state_leaves)
        output, new_states = step_function(x, tuple(states) + constants)
        out_leaves, output_spec = optree.tree_flatten(output)
        out_leaves = [np.array(o, dtype=np.float64) for o in out_leaves]
        if not isinstance(new_states, (list, tuple)):
            new_states = [new_states]
        new_leaves = [np.array(s, dtype=np.float64) for s in optree.tree_leaves(list(new_states))]
        if previous is None:
            previous = [np.zeros_like(o) for o in out_leaves]
        for b in range(batch):
            if valid[b, t]:
                continue
            for k, o in enumerate(out_leaves):
                o[b] = 0.0 if zero_output_for_mask else previous[k][b]
            for k, s in enumerate(new_leaves):
                s[b] = state_leaves[k][b]
        collected.append(out_leaves)
        previous = out_leaves
        state_leaves = new_leaves

    stacked = [np.stack([step[k] for step in collected], axis=1) for k in range(len(collected[0]))]
    if not return_all_outputs:
        stacked = [s[:, -1:] for s in stacked]
    last = [s[:, -1] for s in stacked]
    if time_major:
        stacked = [np.swapaxes(s, 0, 1) for s in stacked]
    return (
        optree.tree_unflatten(output_spec, last),
        optree.tree_unflatten(output_spec, stacked),
        optree.tree_unflatten(state_spec, state_leaves),
    )
