"""LSTM (tf.keras 2), declared once for every kernel.

Layout: kernel ``(D, 4H)``, recurrent_kernel ``(H, 4H)``, gates i, f, c, o; bias ``(4H,)``;
states ``[h, c]``. For one unit of one sample, with the pre-activations
``z = x @ kernel + h @ recurrent_kernel + bias`` (each target sums them its own way):

    i, f, o = ract(z_i), ract(z_f), ract(z_o);  g = act(z_c)
    c' = f * c + i * g;  h' = o * act(c')       (the output is h')
"""

from __future__ import annotations

from ._jit import jitable
from .activations import activate, derivative
from .layout import LSTM, Layout

LAYOUT = Layout(LSTM, "lstm", gate_names=("i", "f", "c", "o"), state_names=("h", "c"))


@jitable
def cell_state(f, c, i, g):
    """The new cell state from the activated forget gate f, the old state c, the activated input
    gate i and candidate g (in the formula's order: on the CPU, LLVM picks which product to fuse
    into an FMA from the order the arguments are computed in)."""
    return f * c + i * g


@jitable
def hidden(o, activated_cell_state):
    """The new h (and output) from the activated output gate and act(c')."""
    return o * activated_cell_state


@jitable
def next_cell_state(z_i, z_f, z_c, c, act, ract):
    """c' from the i, f and c pre-activations and c."""
    return cell_state(activate(ract, z_f), c, activate(ract, z_i), activate(act, z_c))


@jitable
def next_hidden(z_o, new_c, act, ract):
    """h' from the o pre-activation and c'."""
    return hidden(activate(ract, z_o), activate(act, new_c))


@jitable
def update(z_i, z_f, z_c, z_o, c, act, ract):
    """(h', c') from the four pre-activations and c; ``act``/``ract``: activation codes."""
    new_c = next_cell_state(z_i, z_f, z_c, c, act, ract)
    return next_hidden(z_o, new_c, act, ract), new_c


@jitable
def backward(i, f, g, o, c, a, dh, dc, act, ract):
    """One unit's step backwards: from the activated gates i, f, g (candidate), o, the old cell
    state c, a = act(c'), and the cotangents dh of h' and dc of c', return the cotangents of the
    four pre-activations and of c: ``(dz_i, dz_f, dz_c, dz_o, dc_old)``."""
    dc_new = dc + dh * o * derivative(act, a)
    return (dc_new * g * derivative(ract, i), dc_new * c * derivative(ract, f),
            dc_new * i * derivative(act, g), dh * a * derivative(ract, o), dc_new * f)
