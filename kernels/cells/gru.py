"""GRU (tf.keras 2) in both ``reset_after`` modes, declared once for every kernel.

Layout: kernel ``(D, 3H)``, recurrent_kernel ``(H, 3H)``, gates z, r, h; states ``[h]``. For one
unit of one sample, with ``x_* = x @ kernel + input bias`` and the z and r pre-activations
``zz, zr = x_z + h @ U_z, x_r + h @ U_r`` (plus the recurrent bias with reset_after; each target
sums them its own way):

- reset_after=True (``LAYOUT``, kind GRU): bias ``(2, 3H)``, row 0 the input bias, row 1 the
  recurrent bias; ``rec_h = h @ U_h + b_rh``; ``hh = act(x_h + r * rec_h)``.
- reset_after=False (``LAYOUT_RESET_BEFORE``, kind GRU_BEFORE): bias ``(3H,)``;
  ``hh = act(x_h + (r * h) @ U_h)``: the product waits for ``r * h`` (``gates_reset_before``).

Then z, r = ract(zz), ract(zr) and ``h' = z * h + (1 - z) * hh`` (the output is h').
"""

from __future__ import annotations

from ._jit import constant, jitable
from .activations import activate, derivative
from .layout import GRU, GRU_BEFORE, Layout

GATE_NAMES = ("z", "r", "h")
LAYOUT = Layout(GRU, "gru", GATE_NAMES, state_names=("h",), recurrent_bias=True)
LAYOUT_RESET_BEFORE = Layout(GRU_BEFORE, "gru_before", GATE_NAMES, state_names=("h",),
                             reset_before=True)


@jitable
def blend(z, h, candidate):
    """The new h from the update gate z, the old h and the activated candidate."""
    return z * h + (constant(h, 1.0) - z) * candidate


@jitable
def candidate_input(x_h, r, rec_h):
    """reset_after=True: the candidate's pre-activation, the reset gate on the recurrent part."""
    return x_h + r * rec_h


@jitable
def reset(r, h):
    """reset_after=False: r * h, the recurrent input of the candidate's product."""
    return r * h


@jitable
def reset_candidate_input(zr, x_h, rec_h, ract):
    """reset_after=True: the candidate's pre-activation from the r pre-activation, x_h and rec_h."""
    return candidate_input(x_h, activate(ract, zr), rec_h)


@jitable
def blend_candidate(zz, h, candidate_preactivation, act, ract):
    """Both modes: h' from the z pre-activation, h and the candidate's pre-activation."""
    return blend(activate(ract, zz), h, activate(act, candidate_preactivation))


@jitable
def update(zz, zr, x_h, rec_h, h, act, ract):
    """reset_after=True: h' from the z and r pre-activations, x_h, rec_h and h."""
    return blend_candidate(zz, h, reset_candidate_input(zr, x_h, rec_h, ract), act, ract)


@jitable
def gates_reset_before(zz, zr, h, ract):
    """reset_after=False, first half: (z, r * h) from the z and r pre-activations and h."""
    return activate(ract, zz), reset(activate(ract, zr), h)


@jitable
def update_reset_before(z, h, candidate_preactivation, act):
    """reset_after=False, second half: h' from z, h and x_h + (r * h) @ U_h."""
    return blend(z, h, activate(act, candidate_preactivation))


@jitable
def blend_backward(z, h, candidate, dh, act, ract):
    """Both modes, the blend backwards: from z, the old h, the activated candidate and the
    cotangent dh of h', return ``(dz_z, d_candidate_preactivation, dh_old_direct)``."""
    return (dh * (h - candidate) * derivative(ract, z),
            dh * (constant(h, 1.0) - z) * derivative(act, candidate), dh * z)


@jitable
def candidate_backward(d_pre, r, rec_h, ract):
    """reset_after=True: from the cotangent of the candidate's pre-activation, r and rec_h,
    return ``(dz_r, d_rec_h)``."""
    return d_pre * rec_h * derivative(ract, r), d_pre * r


@jitable
def reset_backward(d_rh, r, h, ract):
    """reset_after=False: from the cotangent of r * h, r and the old h, return
    ``(dz_r, dh_old_part)``."""
    return d_rh * h * derivative(ract, r), d_rh * r
