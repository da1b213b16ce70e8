"""The masking rule of ``gpukb.rnn``, for one value of one sample at one step, for every kernel.

At a masked (sample, step) every state keeps its previous value, and the output is zeros with
``zero_output_for_mask``, else the previous output (zeros before the sample's first processed
step). For the Keras cells the previous output is the held ``h`` once the sample had a processed
step (the kernels keep a ``seen`` flag per sample), zeros before: ``cell_previous_output``.

(``gpukb/testing/reference.py`` states the same rule independently, on purpose: it checks this.)
"""

from __future__ import annotations

from ._jit import constant, jitable


@jitable
def state_at(valid, new, old):
    """A state after a step: the step's new value where valid, else the held one."""
    return new if valid else old


@jitable
def masked_output(previous, zero_out):
    """The output at a masked step: zeros with zero_output_for_mask, else the previous output."""
    return constant(previous, 0) if zero_out else previous


@jitable
def output_at(valid, value, previous, zero_out):
    """The output after a step: the step's output where valid, else ``masked_output``."""
    return value if valid else masked_output(previous, zero_out)


@jitable
def cell_previous_output(h, seen):
    """A Keras cell's previous output: its held ``h`` once a step was processed, else zeros."""
    return h if seen else constant(h, 0)
