"""The cuda backend's fused vjp of a ``gpukb.cells`` cell: the fused forward, then the fused
backward, its reverse loop per step (``gpukb.kernels.cuda.backward``) or, when the forward runs
on the persistent kernel, in one launch with the forward's tiling
(``gpukb.kernels.cuda.persistent_backward``).

``fused_cell_vjp(call, tiling, allow_tf32)`` runs the forward on the kernel the forward's plan
picked (``tiling``: the persistent kernel's, or None for per step; see ``_cuda_cells``) with every
step's output kept, so its values are ``gpukb.rnn``'s bitwise (the kernels compute the same values
whether they store every output or the last). Its backward is the CPU's algorithm
(``gpukb/kernels/cpu/backward.py``) on the device: ``cell_backward`` does the GEMMs through the
call's array library (CuPy -> cuBLAS; NumPy under the simulator) and launches the kernels,
everything queued on CuPy's current stream. A call keeps what the CPU's keeps: references to its
arguments and the outputs of every step, ``B * T * H`` values: its residuals
(``rnn_vjp(return_residuals=True)``), from which ``from_residuals`` rebuilds the backward.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any

import numpy as np

from gpukb.kernels.cells import GRU, GRU_BEFORE, LAYOUTS, LSTM
from gpukb.kernels.cells.activations import code as activation_code
from gpukb.kernels.cuda import _runtime
from gpukb.kernels.cuda import backward as kernels
from gpukb.kernels.cuda import persistent_backward

from .._fused import loop_options
from .._vjp.cotangents import Grads
from .._vjp.fused import cell_grads, result_like, step_cotangents
from . import _cuda_cells


def _on_device(xp, array):
    """The CuPy device of ``array`` as a context (nothing to enter for NumPy: the simulator)."""
    return contextlib.nullcontext() if xp is np else array.device


def fused_cell_vjp(call, tiling, allow_tf32: bool = False) -> tuple[tuple, Any]:
    """``(rnn's result, backward)`` for a call that ``gpukb._fused.cell_problem`` accepts;
    ``backward.residuals``: what it keeps beyond the call's arguments (``residual_specs``)."""
    options = loop_options(call)
    xp, x = call.xp, call.input_leaves[0]
    with _on_device(xp, x):
        last, every, states = _cuda_cells.run(dataclasses.replace(call, return_all_outputs=True),
                                              tiling, allow_tf32)
        outputs = every
        if not options.return_all_outputs:
            outputs = (every[-1:] if options.time_major else every[:, -1:]).copy()
    return (last, outputs, states), _Backward(call, every, allow_tf32, tiling)


def residual_specs(call) -> tuple:
    """``(shape, dtype)`` of each residual of a fused call: every step's output only (the layout
    of ``time_major``, processing order); the backward recomputes the pre-activations from it."""
    cell = call.step_function
    T, B, H = call.time_steps, call.batch_size, cell.units
    return (((T, B, H) if call.time_major else (B, T, H), np.dtype(cell.dtype)),)


def from_residuals(call, residuals: tuple, tiling, allow_tf32: bool = False) -> tuple[tuple, Any]:
    """``(arrays shaped like rnn's result, backward)`` from a fused call's residuals (checked
    against ``residual_specs`` by the caller): the backward ``fused_cell_vjp(call, tiling)`` would
    return."""
    (every,) = residuals
    return result_like(call, every), _Backward(call, every, allow_tf32, tiling)


class _Backward:
    """``backward(d_out, d_last, d_states) -> Grads`` over a forward's outputs (``every``); the
    reverse loop on the persistent backward kernel with ``tiling``, or per step when None."""

    def __init__(self, call, every, allow_tf32: bool, tiling=None):
        self.call, self.every, self.allow_tf32, self.tiling = call, every, allow_tf32, tiling
        self.residuals = (every,)

    def __call__(self, d_out: list, d_last: list, d_states: list) -> Grads:
        call, xp = self.call, self.call.xp
        cell: Any = call.step_function
        x = call.input_leaves[0]
        dtype = np.dtype(cell.dtype)
        with _on_device(xp, x), _runtime.gemm_precision(dtype, self.allow_tf32):
            gy = step_cotangents(xp, call, d_out, d_last, dtype)
            grads = cell_backward(xp, cell.kernel_layout.kind, x, cell.kernel,
                                  cell.recurrent_kernel, cell.bias, call.state_leaves,
                                  call.step_mask, loop_options(call), cell.activation,
                                  getattr(cell, "recurrent_activation", "linear"), self.every,
                                  gy, d_states, self.tiling)
        return cell_grads(xp, call, grads)


def _processing_order(xp, a, time_major, go_backwards):
    """A (B, T, ...) or (T, B, ...) array as (T, B, ...) in processing order, contiguous."""
    a = a if time_major else xp.swapaxes(a, 0, 1)
    return xp.ascontiguousarray(a[::-1] if go_backwards else a)


def cell_backward(xp, kind, x, kernel, recurrent_kernel, bias, states, step_mask, options,
                  activation, recurrent_activation, outputs, d_outputs, d_states, tiling=None):
    """The gradients of a fused forward, as ``kernels.cpu.backward.cell_backward`` returns them
    (same arguments, same dict), computed on the device (see the module docstring).

    ``outputs``: every step's output in the layout of ``options.time_major``; ``d_outputs``: the
    cotangent of every processed step's output, ``(T, B, H)`` in processing order; ``tiling``:
    the reverse loop on the persistent backward kernel with this ``persistent.Plan`` (the
    forward's), or per step when None."""
    layout = LAYOUTS[kind]
    dt = np.dtype(outputs.dtype)
    activations = (activation_code(activation), activation_code(recurrent_activation))
    tm, back = bool(options.time_major), bool(options.go_backwards)
    launcher = _runtime.Launcher(xp)
    view = launcher.view
    H = recurrent_kernel.shape[0]
    G = layout.gates * H
    xs = _processing_order(xp, x, tm, back)                            # (T, B, D)
    T, B, D = xs.shape
    ys = _processing_order(xp, outputs, tm, False)                     # already processed order
    has_mask = step_mask is not None
    valid = (xp.ascontiguousarray(step_mask[::-1] if back else step_mask) if has_mask
             else xp.ones((1, 1), dtype=bool))
    per_unit, per_gate_unit = kernels.launch_shape(B * H), kernels.launch_shape(T * B * H)

    def launch(kernel, shape, *args):
        configured = launcher.configure(kernel, *shape)
        if configured is not None:   # None: nothing to compute (B == 0)
            configured(*args)

    h_prev = xp.empty((T, B, H), dtype=dt)
    h0 = xp.ascontiguousarray(states[0])
    launch(kernels.states_before, per_unit, view(ys), view(valid), has_mask, view(h0), view(h_prev))
    x2, hp2 = xs.reshape(T * B, D), h_prev.reshape(T * B, H)

    U = xp.ascontiguousarray(recurrent_kernel)
    z = xp.dot(x2, kernel).reshape(T, B, G)             # input part of the pre-activations
    rows = None if bias is None else bias.reshape(-1, G)
    if rows is not None:
        z += rows[0]
    placeholder = xp.zeros((1, 1, 1), dtype=dt)
    rec, c, rh = placeholder, placeholder, placeholder
    if kind == GRU:
        rec = xp.dot(hp2, U).reshape(T, B, G)
        if rows is not None:
            rec += rows[1]
    elif kind == GRU_BEFORE:
        rec = xp.dot(hp2, U[:, :2 * H]).reshape(T, B, 2 * H)
        rh = xp.empty((T, B, H), dtype=dt)
    else:
        z += xp.dot(hp2, U).reshape(T, B, G)
    launch(kernels.gates_kernel(dt, kind), per_gate_unit, view(z), view(rec), view(h_prev),
           view(rh), activations)
    if kind == LSTM:
        c = xp.empty((T + 1, B, H), dtype=dt)
        c[0] = states[1]
        launch(kernels.lstm_cell_states, per_unit, view(z), view(c), view(valid), has_mask)
    elif kind == GRU_BEFORE:   # the candidate waits for r: (r * h) @ U_h
        rec_h = xp.dot(rh.reshape(T * B, H), U[:, 2 * H:]).reshape(T, B, H)
        launch(kernels.gru_before_candidate, per_gate_unit, view(z), view(rec_h), activations[0])

    # The reverse loop: h's cotangent is direct + through (through: the recurrent product's).
    direct = xp.array(d_states[0], dtype=dt, order="C", copy=True)
    gc = (xp.array(d_states[1], dtype=dt, order="C", copy=True) if kind == LSTM
          else xp.zeros((1, 1), dtype=dt))
    dz = xp.empty((T, B, G), dtype=dt)
    dz_rec = xp.empty((T, B, G), dtype=dt) if kind == GRU else placeholder
    step_arrays = (view(z), view(h_prev), view(c), view(rec), view(valid), has_mask,
                   bool(options.zero_output_for_mask), view(xp.ascontiguousarray(d_outputs)))
    if tiling is None:
        gh = _reverse_per_step(xp, launcher, kind, dt, U, step_arrays, direct, gc, dz, dz_rec,
                               activations)
    else:
        gh = _reverse_persistent(launcher, tiling, kind, dt, U, step_arrays, direct, gc, dz,
                                 dz_rec, activations)

    dz2 = dz.reshape(T * B, G)
    d_x = xp.dot(dz2, xp.asarray(kernel).T).reshape(T, B, D)
    d_x = d_x[::-1] if back else d_x
    d_x = xp.ascontiguousarray(d_x if tm else xp.swapaxes(d_x, 0, 1))
    if kind == GRU_BEFORE:
        d_u = xp.empty_like(U)
        d_u[:, :2 * H] = xp.dot(hp2.T, dz2[:, :2 * H])
        d_u[:, 2 * H:] = xp.dot(rh.reshape(T * B, H).T, dz2[:, 2 * H:])
    else:
        d_u = xp.dot(hp2.T, (dz_rec if kind == GRU else dz).reshape(T * B, G))
    d_bias = None
    if bias is not None:
        d_bias = dz2.sum(axis=0)
        if kind == GRU:
            d_bias = xp.stack([d_bias, dz_rec.reshape(T * B, G).sum(axis=0)])
    d_states_out = [gh, gc] if kind == LSTM else [gh]
    return {"inputs": d_x, "states": d_states_out, "kernel": xp.dot(x2.T, dz2),
            "recurrent_kernel": d_u, "bias": d_bias}


def _reverse_per_step(xp, launcher, kind, dt, U, step_arrays, direct, gc, dz, dz_rec,
                      activations):
    """The reverse loop per step: one pointwise launch and one GEMM ``dz[i] @ U.T`` (GRU without
    reset_after: two of each); fills ``dz`` (``dz_rec``) and ``gc``; returns the initial h's
    cotangent."""
    view = launcher.view
    T, B, G = dz.shape
    H = U.shape[0]
    through = xp.zeros((B, H), dtype=dt)
    if kind == GRU_BEFORE:
        ut, ut_h = xp.ascontiguousarray(U[:, :2 * H].T), xp.ascontiguousarray(U[:, 2 * H:].T)
        cand, d_rh, part = (xp.zeros((B, n), dtype=dt) for n in (H, H, 2 * H))
    else:
        ut = xp.ascontiguousarray(U.T)
        cand = xp.zeros((1, 1), dtype=dt)
    carry = xp.zeros((B, H), dtype=dt)
    per_unit = kernels.launch_shape(B * H)
    step = launcher.configure(kernels.step_kernel(dt, kind), *per_unit)
    reset = launcher.configure(kernels.gru_before_reset, *per_unit)
    a, h_prev, _, _, valid, has_mask = step_arrays[:6]
    arrays = (*step_arrays, view(direct), view(through), view(gc), view(carry), view(dz),
              view(dz_rec), view(cand), activations)
    if kind == GRU_BEFORE:
        reset_arrays = (a, h_prev, valid, has_mask, view(d_rh), view(dz), view(direct),
                        view(part), activations[1])
    if step is None:   # B == 0
        return direct + through
    # Arguments converted once; each step passes only i.
    step = launcher.repeated(step, (0, *arrays), varying=(0,))
    if kind == GRU_BEFORE:
        reset = launcher.repeated(reset, (0, *reset_arrays), varying=(0,))
    for i in range(T - 1, -1, -1):
        step(i)
        if kind == GRU_BEFORE:
            xp.dot(cand, ut_h, out=d_rh)
            reset(i)
            xp.dot(part, ut, out=through)
        else:
            xp.dot(dz_rec[i] if kind == GRU else dz[i], ut, out=through)
    return direct + through


def _reverse_persistent(launcher, tiling, kind, dt, U, step_arrays, direct, gc, dz, dz_rec,
                        activations):
    """The reverse loop in one launch of the persistent backward kernel with ``tiling``; fills
    ``dz`` (``dz_rec``) and ``gc``; returns the initial h's cotangent (written over
    ``direct``)."""
    view = launcher.view
    H = U.shape[0]
    launcher.launch(
        persistent_backward.persistent_backward_kernel(dt, kind, tiling.coop), tiling.blocks,
        tiling.threads, *step_arrays, view(U), view(direct), view(gc), view(dz), view(dz_rec),
        activations, tiling,
        shared_bytes=persistent_backward.shared_bytes(tiling, H, kind, dt.itemsize))
    return direct
