"""SimpleRNN (tf.keras 2), declared once for every kernel.

Layout: kernel ``(D, H)``, recurrent_kernel ``(H, H)``, bias ``(H,)``; states ``[h]``.
``h' = act(x @ kernel + h @ recurrent_kernel + bias)``; the output is h'.
"""

from __future__ import annotations

from ._jit import jitable
from .activations import activate, derivative
from .layout import SIMPLE_RNN, Layout

LAYOUT = Layout(SIMPLE_RNN, "simple_rnn", gate_names=("h",), state_names=("h",))


@jitable
def update(z, act):
    """h' from the pre-activation z."""
    return activate(act, z)


@jitable
def backward(y, dh, act):
    """The cotangent of the pre-activation from the output y = h' and its cotangent dh."""
    return dh * derivative(act, y)
