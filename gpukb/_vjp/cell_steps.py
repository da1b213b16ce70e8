"""The step derivative of each ``gpukb.cells`` cell on any array namespace (the generic path).

``cell_step_vjp(cell)(step_input, states)`` gives the cell's own values (``cell(step_input,
states)``, so the forward is the cell's, bitwise) and a pullback that recomputes the gates from
the step's input and states, then applies the cell's derivative. The maths is the same as the
scalar derivatives in ``gpukb.kernels.cells`` (which the fused kernels use), written here on whole
arrays; each activation's derivative is a function of its output (``derivative``).
"""

from __future__ import annotations

from typing import Any, Callable

from ..cells import Cell, GRUCell, LSTMCell, SimpleRNNCell


def derivative(name: str, y: Any, xp: Any) -> Any:
    """d act / dx of activation ``name`` as a function of its output ``y`` (same dtype as y), on
    namespace ``xp`` (only ``where``: the generic loop's subset).

    tanh: 1 - y^2; sigmoid: y (1 - y); the piecewise linear ones: their slope inside the linear
    piece (0 < y < 1 for the hard sigmoids, y > 0 for relu), else 0; linear: 1.
    """
    if name == "tanh":
        return 1 - y * y
    if name == "sigmoid":
        return y * (1 - y)
    zero = y * 0   # Python scalars are weak: y's dtype
    if name == "hard_sigmoid":
        return xp.where((y > 0) & (y < 1), zero + 0.2, zero)
    if name == "hard_sigmoid_keras3":
        return xp.where((y > 0) & (y < 1), zero + 1.0 / 6.0, zero)
    if name == "relu":
        return xp.where(y > 0, zero + 1, zero)
    if name == "linear":
        return zero + 1
    raise ValueError(f"no derivative for activation {name!r}")


def cell_step_vjp(cell: Cell) -> Callable:
    """The step vjp (README, "Gradients") of a gpukb.cells cell."""
    backward = next(f for kind, f in _BACKWARD.items() if isinstance(cell, kind))

    def vjp(step_input, states):
        output, new_states = cell(step_input, states)
        x = cell._in_cell_dtype("step_input", step_input)
        current = [cell._in_cell_dtype(f"states[{i}]", s) for i, s in enumerate(states[:cell.n_states])]
        extra = len(states) - cell.n_states   # constants: ignored by the cell, zero gradient

        def pullback(d_output, d_new_states):
            d_new = list(d_new_states) if isinstance(d_new_states, (list, tuple)) else [d_new_states]
            d_x, d_states, d_weights = backward(cell, x, current, d_output, d_new)
            return d_x, tuple(d_states) + (None,) * extra, d_weights

        return (output, new_states), pullback

    return vjp


def _weights(cell: Cell, d_kernel, d_recurrent, d_bias) -> dict:
    grads = {"kernel": d_kernel, "recurrent_kernel": d_recurrent}
    if cell.bias is not None:
        grads["bias"] = d_bias
    return grads


def _lstm(cell: LSTMCell, x, states, d_output, d_new):
    h, c = states
    H = cell.units
    rec, act = cell._f_rec, cell._f_act
    z = x @ cell.kernel + h @ cell.recurrent_kernel
    if cell.bias is not None:
        z = z + cell.bias
    i, f, g, o = rec(z[:, :H]), rec(z[:, H:2 * H]), act(z[:, 2 * H:3 * H]), rec(z[:, 3 * H:])
    a = act(f * c + i * g)
    dh = d_output + d_new[0]
    dc = d_new[1] + dh * o * derivative(cell.activation, a, cell._xp)
    dz = cell._xp.empty(tuple(z.shape), dtype=z.dtype)
    dz[:, :H] = dc * g * derivative(cell.recurrent_activation, i, cell._xp)
    dz[:, H:2 * H] = dc * c * derivative(cell.recurrent_activation, f, cell._xp)
    dz[:, 2 * H:3 * H] = dc * i * derivative(cell.activation, g, cell._xp)
    dz[:, 3 * H:] = dh * a * derivative(cell.recurrent_activation, o, cell._xp)
    d_x = dz @ cell.kernel.T
    d_h = dz @ cell.recurrent_kernel.T
    return d_x, [d_h, dc * f], _weights(cell, x.T @ dz, h.T @ dz, dz.sum(axis=0))


def _gru(cell: GRUCell, x, states, d_output, d_new):
    (h,) = states
    H = cell.units
    xp, rec, act = cell._xp, cell._f_rec, cell._f_act
    U = cell.recurrent_kernel
    mx = x @ cell.kernel
    if cell.bias is not None:
        mx = mx + (cell.bias[0] if cell.reset_after else cell.bias)
    if cell.reset_after:
        mi = h @ U
        if cell.bias is not None:
            mi = mi + cell.bias[1]
    else:
        mi = h @ U[:, :2 * H]
    z = rec(mx[:, :H] + mi[:, :H])
    r = rec(mx[:, H:2 * H] + mi[:, H:2 * H])
    rh: Any = None if cell.reset_after else r * h
    hh = act(mx[:, 2 * H:] + (r * mi[:, 2 * H:] if cell.reset_after else rh @ U[:, 2 * H:]))
    dh = d_output + d_new[0]
    da = dh * (1 - z) * derivative(cell.activation, hh, cell._xp)   # candidate pre-activation
    d_prev = dh * z
    if cell.reset_after:
        dr = da * mi[:, 2 * H:]
    else:
        d_rh = da @ U[:, 2 * H:].T
        dr = d_rh * h
        d_prev = d_prev + d_rh * r
    dmx = xp.empty(tuple(mx.shape[:1]) + (3 * H,), dtype=mx.dtype)
    dmx[:, :H] = dh * (h - hh) * derivative(cell.recurrent_activation, z, cell._xp)
    dmx[:, H:2 * H] = dr * derivative(cell.recurrent_activation, r, cell._xp)
    dmx[:, 2 * H:] = da
    d_x = dmx @ cell.kernel.T
    if cell.reset_after:
        dmi = xp.empty(tuple(dmx.shape), dtype=dmx.dtype)
        dmi[:, :2 * H] = dmx[:, :2 * H]
        dmi[:, 2 * H:] = da * r
        d_prev = d_prev + dmi @ U.T
        d_u = h.T @ dmi
        d_bias = None
        if cell.bias is not None:
            d_bias = xp.empty(tuple(cell.bias.shape), dtype=dmx.dtype)
            d_bias[0] = dmx.sum(axis=0)
            d_bias[1] = dmi.sum(axis=0)
    else:
        d_prev = d_prev + dmx[:, :2 * H] @ U[:, :2 * H].T
        d_u = xp.empty(tuple(U.shape), dtype=dmx.dtype)
        d_u[:, :2 * H] = h.T @ dmx[:, :2 * H]
        d_u[:, 2 * H:] = rh.T @ da
        d_bias = dmx.sum(axis=0)
    return d_x, [d_prev], _weights(cell, x.T @ dmx, d_u, d_bias)


def _simple_rnn(cell: SimpleRNNCell, x, states, d_output, d_new):
    (h,) = states
    z = x @ cell.kernel + h @ cell.recurrent_kernel
    if cell.bias is not None:
        z = z + cell.bias
    y = cell._f_act(z)
    dz = (d_output + d_new[0]) * derivative(cell.activation, y, cell._xp)
    return (dz @ cell.kernel.T, [dz @ cell.recurrent_kernel.T],
            _weights(cell, x.T @ dz, h.T @ dz, dz.sum(axis=0)))


_BACKWARD = {LSTMCell: _lstm, GRUCell: _gru, SimpleRNNCell: _simple_rnn}
