"""The fused backward pass of the Keras cells on the CPU (the vjp of ``run_cell``).

    grads = cell_backward(kind, x, kernel, recurrent_kernel, bias, states, step_mask, options,
                          activation, recurrent_activation, outputs, d_outputs, d_states)

``outputs``: the forward's outputs with every step kept (``run_cell`` with
``return_all_outputs=True``), in the layout of ``options.time_major``; ``d_outputs``: the
cotangent of every processed step's output in processing order ``(T, B, H)`` (zeros where none);
``d_states``: the cotangents of the final states. Returns a dict: ``"inputs"`` (x's shape),
``"states"`` (one per state), ``"kernel"``, ``"recurrent_kernel"`` and ``"bias"`` (None without).

How it runs (everything in processing order, ``(T, B, ...)``):

1. The states before each step come from the outputs: a cell's output is its new h, and a masked
   step holds h, so h before step i is the output of the sample's last valid step before i
   (``initial h`` before its first). With every h known, the gates' pre-activations of all steps
   are two large GEMMs (``x @ kernel``, ``h @ recurrent_kernel``), not T small ones. GRU without
   reset_after needs one more, ``(r * h) @ U_h``, once r is known.
2. One pointwise pass activates the gates (and, for the LSTM, runs the cell state forward).
3. The reverse loop: per step, each sample's derivative along its row (the cells' scalar
   ``backward`` functions in ``kernels/cells``, one compiled call) gives the pre-activations'
   cotangents dz, then one GEMM ``dz @ recurrent_kernel.T`` (NumPy's BLAS: Numba's ``np.dot``
   measured several times slower here) gives the previous h's (GRU without reset_after: two,
   around the reset gate). At a masked step the state cotangents pass through unchanged and the output
   cotangent moves to the previous step's output (unless ``zero_output_for_mask``).
4. The weights' and inputs' gradients are GEMMs over all steps at once: ``x.T @ dz``,
   ``h.T @ dz``, ``dz @ kernel.T``.
"""

import threading

import numpy as np

from ..cells import GRU, GRU_BEFORE, LAYOUTS, LSTM, register
from ..cells import gru as gru_cell
from ..cells import lstm as lstm_cell
from ..cells import simple_rnn as rnn_cell
from ..cells.activations import activate, code
from . import activations as _cpu_activations  # noqa: F401  (the CPU's tanh and sigmoid)
from ._common import KERNEL_OPTIONS, check_dtypes
from ._numba_cache import cached_njit

register()


@cached_njit(**KERNEL_OPTIONS, nogil=True)
def _states_before(outputs, valid, has_mask, h0, h_prev):
    """h_prev[i]: each sample's h before processing step i (outputs in processing order)."""
    T, B, H = h_prev.shape
    for n in range(B):
        src = h0[n]
        for i in range(T):
            h_prev[i, n, :] = src
            if not has_mask or valid[i, n]:
                src = outputs[i, n]


def _make_gates(kind):
    """The pointwise pass of step 2 for cell kind ``kind`` (see the module docstring)."""
    n_gates = LAYOUTS[kind].gates

    def gates(z, rec, c, valid, has_mask, act, ract):
        # z: (T, B, G) pre-activations, activated in place (GRU: input part only; GRU_BEFORE:
        # only z and r here, the candidate in ``activate_candidate``); rec: GRU's recurrent part;
        # c: LSTM cell states (T + 1, B, H), c[0] given.
        T, B, G = z.shape
        H = G // n_gates
        for i in range(T):
            for n in range(B):
                row = z[i, n]
                if kind == LSTM:
                    for j in range(H):
                        row[j] = activate(ract, row[j])
                        row[H + j] = activate(ract, row[H + j])
                        row[2 * H + j] = activate(act, row[2 * H + j])
                        row[3 * H + j] = activate(ract, row[3 * H + j])
                    keep = has_mask and not valid[i, n]
                    for j in range(H):
                        c[i + 1, n, j] = c[i, n, j] if keep else lstm_cell.cell_state(
                            row[H + j], c[i, n, j], row[j], row[2 * H + j])
                elif kind == GRU:
                    r_row = rec[i, n]
                    for j in range(H):
                        zz = activate(ract, row[j] + r_row[j])
                        r = activate(ract, row[H + j] + r_row[H + j])
                        row[j] = zz
                        row[H + j] = r
                        row[2 * H + j] = activate(act, gru_cell.candidate_input(
                            row[2 * H + j], r, r_row[2 * H + j]))
                elif kind == GRU_BEFORE:
                    r_row = rec[i, n]
                    for j in range(2 * H):
                        row[j] = activate(ract, row[j] + r_row[j])
                else:
                    for j in range(H):
                        row[j] = activate(act, row[j])

    return gates


def _make_step(kind):
    """One step of the reverse loop (step 3) for cell kind ``kind``, before its GEMM."""

    def step(i, a, h_prev, c, rec, valid, has_mask, zero_out, gy, gh, gc, dz, dz_rec, carry,
             direct, cand, act, ract):
        # a: activated gates (T, B, G); gy: output cotangents (T, B, H); gh: the new h's
        # cotangent; gc: the LSTM's cell state cotangent, updated in place; dz[i]: the
        # pre-activations' cotangents, written (GRU: dz_rec[i], the recurrent part's); carry:
        # output cotangents handed back by masked steps; direct: the old h's cotangent outside
        # the GEMM, written; cand: GRU_BEFORE's candidate dz, for d(r * h).
        B, H = gh.shape
        for n in range(B):
            if has_mask and not valid[i, n]:
                for j in range(H):
                    if not zero_out:
                        carry[n, j] += gy[i, n, j]
                    direct[n, j] = gh[n, j]
                dz[i, n, :] = 0
                if kind == GRU:
                    dz_rec[i, n, :] = 0
                if kind == GRU_BEFORE:
                    cand[n, :] = 0
                continue
            row = a[i, n]
            for j in range(H):
                dh = gy[i, n, j] + carry[n, j] + gh[n, j]
                carry[n, j] = 0
                if kind == LSTM:
                    dzi, dzf, dzc, dzo, dc = lstm_cell.backward(
                        row[j], row[H + j], row[2 * H + j], row[3 * H + j], c[i, n, j],
                        activate(act, c[i + 1, n, j]), dh, gc[n, j], act, ract)
                    dz[i, n, j] = dzi
                    dz[i, n, H + j] = dzf
                    dz[i, n, 2 * H + j] = dzc
                    dz[i, n, 3 * H + j] = dzo
                    gc[n, j] = dc
                    direct[n, j] = 0
                elif kind == GRU or kind == GRU_BEFORE:
                    dzz, dpre, dd = gru_cell.blend_backward(row[j], h_prev[i, n, j],
                                                            row[2 * H + j], dh, act, ract)
                    dz[i, n, j] = dzz
                    dz[i, n, 2 * H + j] = dpre
                    direct[n, j] = dd
                    if kind == GRU:
                        dzr, drec = gru_cell.candidate_backward(dpre, row[H + j],
                                                                rec[i, n, 2 * H + j], ract)
                        dz[i, n, H + j] = dzr
                        dz_rec[i, n, j] = dzz
                        dz_rec[i, n, H + j] = dzr
                        dz_rec[i, n, 2 * H + j] = drec
                    else:
                        cand[n, j] = dpre
                else:
                    dz[i, n, j] = rnn_cell.backward(row[j], dh, act)
                    direct[n, j] = 0

    return step


@cached_njit(**KERNEL_OPTIONS, nogil=True)
def _reset_step(i, a, h_prev, valid, has_mask, d_rh, dz, direct, part, ract):
    """GRU_BEFORE, the reset gate of step i once d(r * h) = cand @ U_h.T is known: dz of r, the
    old h's share, and ``part``, the dz of z and r for the GEMM with their recurrent kernel."""
    B, H = direct.shape
    for n in range(B):
        if has_mask and not valid[i, n]:
            part[n, :] = 0
            continue
        for j in range(H):
            dzr, dh = gru_cell.reset_backward(d_rh[n, j], a[i, n, H + j], h_prev[i, n, j], ract)
            dz[i, n, H + j] = dzr
            direct[n, j] += dh
            part[n, j] = dz[i, n, j]
            part[n, H + j] = dzr


_compiled: dict = {}
_lock = threading.Lock()


def _kernels(kind):
    with _lock:
        pair = _compiled.get(kind)
        if pair is None:
            jit = cached_njit(**KERNEL_OPTIONS, nogil=True)
            pair = _compiled[kind] = (jit(_make_gates(kind)), jit(_make_step(kind)))
        return pair


@cached_njit(**KERNEL_OPTIONS, nogil=True)
def _activate_candidate(z, rec, act):
    """GRU_BEFORE: the candidate columns of z (x_h + b_h) plus rec ((r * h) @ U_h), activated."""
    T, B, G = z.shape
    H = G // 3
    for i in range(T):
        for n in range(B):
            for j in range(H):
                z[i, n, 2 * H + j] = activate(act, z[i, n, 2 * H + j] + rec[i, n, j])


def _processing_order(a, time_major, go_backwards):
    """A (B, T, ...) or (T, B, ...) array as (T, B, ...) in processing order (a view)."""
    a = a if time_major else np.swapaxes(a, 0, 1)
    return a[::-1] if go_backwards else a


def cell_backward(kind, x, kernel, recurrent_kernel, bias, states, step_mask, options,
                  activation, recurrent_activation, outputs, d_outputs, d_states):
    """The gradients of a ``run_cell`` call (see the module docstring)."""
    layout = LAYOUTS[kind]
    dt = check_dtypes(x, kernel, recurrent_kernel, bias, *states, outputs, d_outputs, *d_states)
    act, ract = code(activation), code(recurrent_activation)
    tm, back = bool(options.time_major), bool(options.go_backwards)
    H = recurrent_kernel.shape[0]
    G = layout.gates * H
    xs = np.ascontiguousarray(_processing_order(x, tm, back))          # (T, B, D)
    T, B, D = xs.shape
    ys = np.ascontiguousarray(_processing_order(outputs, tm, False))    # already processed order
    has_mask = step_mask is not None
    valid = (np.ascontiguousarray(step_mask[::-1] if back else step_mask, dtype=np.bool_)
             if has_mask else np.ones((1, 1), np.bool_))
    h_prev = np.empty((T, B, H), dt)
    _states_before(ys, valid, has_mask, np.ascontiguousarray(states[0], dtype=dt), h_prev)
    x2, hp2 = xs.reshape(T * B, D), h_prev.reshape(T * B, H)

    rows = None if bias is None else np.asarray(bias, dt).reshape(-1, G)
    z = (x2 @ kernel).reshape(T, B, G)            # input part of the pre-activations
    if rows is not None:
        z += rows[0]
    placeholder = np.zeros((1, 1, 1), dt)
    rec, c = placeholder, placeholder
    U = np.asarray(recurrent_kernel, dt)
    if kind == GRU:
        rec = (hp2 @ U).reshape(T, B, G)
        if rows is not None:
            rec += rows[1]
    elif kind == GRU_BEFORE:
        rec = (hp2 @ U[:, :2 * H]).reshape(T, B, 2 * H)
    else:
        z += (hp2 @ U).reshape(T, B, G)
    if kind == LSTM:
        c = np.empty((T + 1, B, H), dt)
        c[0] = states[1]
    gates, step = _kernels(kind)
    gates(z, rec, c, valid, has_mask, act, ract)
    rh = placeholder
    if kind == GRU_BEFORE:   # the candidate waits for r: (r * h) @ U_h
        rh = z[:, :, H:2 * H] * h_prev
        _activate_candidate(z, (rh.reshape(T * B, H) @ U[:, 2 * H:]).reshape(T, B, H), act)

    gh = np.array(d_states[0], dtype=dt, order="C", copy=True)
    gc = (np.array(d_states[1], dtype=dt, order="C", copy=True) if kind == LSTM
          else np.zeros((1, 1), dt))
    dz = np.empty((T, B, G), dt)
    dz_rec = np.empty((T, B, G), dt) if kind == GRU else placeholder
    if kind == GRU_BEFORE:
        ut, ut2 = np.ascontiguousarray(U[:, :2 * H].T), np.ascontiguousarray(U[:, 2 * H:].T)
    else:
        ut, ut2 = np.ascontiguousarray(U.T), np.zeros((1, 1), dt)
    gy = np.ascontiguousarray(d_outputs, dtype=dt)
    carry, direct, cand, d_rh, through_u = (np.zeros((B, H), dt) for _ in range(5))
    part = np.zeros((B, 2 * H), dt)
    zero_out = bool(options.zero_output_for_mask)
    # The GEMMs run in NumPy (its BLAS), between compiled calls: Python sees Ctrl-C each step.
    for i in range(T - 1, -1, -1):
        step(i, z, h_prev, c, rec, valid, has_mask, zero_out, gy, gh, gc, dz, dz_rec, carry,
             direct, cand, act, ract)
        if kind == GRU_BEFORE:
            np.dot(cand, ut2, out=d_rh)
            _reset_step(i, z, h_prev, valid, has_mask, d_rh, dz, direct, part, ract)
            np.dot(part, ut, out=through_u)
        else:
            np.dot(dz_rec[i] if kind == GRU else dz[i], ut, out=through_u)
        np.add(direct, through_u, out=gh)

    dz2 = dz.reshape(T * B, G)
    d_x = (dz2 @ np.asarray(kernel, dt).T).reshape(T, B, D)
    d_x = np.ascontiguousarray(_processing_order(d_x, tm, back) if tm
                               else np.swapaxes(d_x[::-1] if back else d_x, 0, 1))
    if kind == GRU_BEFORE:
        d_u = np.empty_like(U)
        d_u[:, :2 * H] = hp2.T @ dz2[:, :2 * H]
        d_u[:, 2 * H:] = rh.reshape(T * B, H).T @ dz2[:, 2 * H:]
    else:
        d_u = hp2.T @ (dz_rec if kind == GRU else dz).reshape(T * B, G)
    d_bias = None
    if bias is not None:
        d_bias = dz2.sum(axis=0)
        if kind == GRU:
            d_bias = np.stack([d_bias, dz_rec.reshape(T * B, G).sum(axis=0)])
    d_states_out = [gh, gc] if kind == LSTM else [gh]
    return {"inputs": d_x, "states": d_states_out, "kernel": x2.T @ dz2,
            "recurrent_kernel": d_u, "bias": d_bias}
