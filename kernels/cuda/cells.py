"""The fused path for the Keras cells (LSTM, GRU, SimpleRNN) on CuPy (or simulator NumPy) arrays.

``run_cell(call, cell, ...)`` takes a checked ``gpukb._rnn.RnnCall`` whose step function is a
``gpukb.cells`` cell and returns ``(last_output, outputs, new_states)`` like the generic loop, or
NotImplemented when the call is not one the kernels handle (the generic loop then runs the cell
and raises its errors). Steps:

1. the input projection ``x @ W`` of all T steps as ONE GEMM (CuPy -> cuBLAS);
2. either the persistent kernel (one launch for the whole sequence; see ``persistent``), chosen
   when ``persistent.plan`` finds a tiling (small batches), or per step: the recurrent GEMM
   ``h @ U`` into a preallocated buffer, then ONE fused kernel (``step``) for gates, masking,
   state hold and the output write.

Everything is queued on CuPy's current stream; nothing here waits for the GPU.
"""

from __future__ import annotations

import threading

import numpy as np

from ..cells import GRU, GRU_BEFORE, LSTM, SIMPLE_RNN
from . import _runtime, persistent, step
from .activations import code as act_code

PATHS = ("auto", "step", "persistent")

_last = threading.local()


def last_path():
    """What the last fused call of this thread ran: "step" or the persistent ``Plan`` (diagnostics)."""
    return getattr(_last, "path", None)


def eligible(call, cell) -> bool:
    """True when the fused kernels compute exactly what the cell would, for this call.

    The rule is the one every fused backend shares (``gpukb._fused.fused_cell``): one rank-3 input,
    the cell's own (B, H) states, everything in the cell's float32/float64 dtype and library.
    Anything else goes to the generic loop, which runs the cell and raises its own errors.
    """
    from gpukb._fused import fused_cell

    return fused_cell(call) is cell


def _kind(cell) -> int:
    """The cell's kind (kernels/cells), as the kernels take it."""
    return cell.kernel_layout.kind


def _biases(cell, xp, dtype, kind):
    """(bias added to x @ W, bias added to h @ U) as contiguous 1-D arrays (zeros when absent)."""
    H = cell.units
    width = {LSTM: 4 * H, SIMPLE_RNN: H}.get(kind, 3 * H)
    bias = cell.bias
    if kind == GRU:
        if bias is None:
            zeros = xp.zeros(width, dtype=dtype)
            return zeros, zeros
        return xp.ascontiguousarray(bias[0]), xp.ascontiguousarray(bias[1])
    bias_x = xp.zeros(width, dtype=dtype) if bias is None else xp.ascontiguousarray(bias)
    return bias_x, xp.zeros(1, dtype=dtype)


def run_cell(call, cell, *, path: str = "auto", allow_tf32: bool = False, plan_options=None):
    """Run ``cell`` over ``call`` with the fused kernels; NotImplemented if not ``eligible``.

    ``path``: "auto" (persistent kernel where ``persistent.plan`` finds a tiling, else per step),
    "step" (always per step) or "persistent" (the persistent kernel where any tiling fits, ignoring
    the batch-size rule; per step otherwise). ``plan_options`` override the planner's budgets.
    """
    if path not in PATHS:
        raise ValueError(f"cuda backend: unknown cell path {path!r}; expected one of {PATHS}.")
    if not eligible(call, cell):
        return NotImplemented
    xp = call.xp
    dtype = np.dtype(cell.dtype)
    with _runtime.gemm_precision(dtype, allow_tf32):
        return _run(call, cell, xp, dtype, path, dict(plan_options or {}))


def _run(call, cell, xp, dtype, path, plan_options):
    launcher = _runtime.Launcher(xp)
    kind = _kind(cell)
    B, T, H, D = call.batch_size, call.time_steps, cell.units, cell.input_dim
    x = call.input_leaves[0]
    W = xp.ascontiguousarray(cell.kernel)
    U = xp.ascontiguousarray(cell.recurrent_kernel)
    G = W.shape[1]
    bias_x, bias_r = _biases(cell, xp, dtype, kind)
    a_act = act_code(cell.activation)
    r_act = act_code(getattr(cell, "recurrent_activation", "linear"))

    # 1. x @ W for all steps: one GEMM, laid out like x ((T, B, G) when time-major).
    xproj = xp.dot(x.reshape((x.shape[0] * x.shape[1], D)), W).reshape((x.shape[0], x.shape[1], G))

    out_steps = T if call.return_all_outputs else 1
    out_shape = (out_steps, B, H) if call.time_major else (B, out_steps, H)
    out = xp.empty(out_shape, dtype=dtype)
    has_mask = call.step_mask is not None
    mask = xp.ascontiguousarray(call.step_mask) if has_mask else xp.ones((1, 1), dtype=bool)
    seen = xp.zeros(max(B, 1), dtype=bool)
    h0 = call.initial_states[0]
    c0 = call.initial_states[1] if kind == LSTM else None

    options = dict(plan_options)
    if path == "persistent":
        options.setdefault("max_batch", B)
    chosen = persistent.plan(B, H, kind, dtype.itemsize, **options) if path != "step" else None

    flags = (bool(call.time_major), bool(call.go_backwards), bool(call.return_all_outputs),
             bool(call.zero_output_for_mask))
    _last.path = chosen if chosen is not None else "step"
    if chosen is not None:
        h, c = _run_persistent(launcher, chosen, dtype, kind, xproj, U, bias_x, bias_r, h0, c0,
                               out, mask, has_mask, seen, a_act, r_act, flags, xp)
    else:
        h, c = _run_steps(launcher, dtype, kind, xproj, U, bias_x, bias_r, h0, c0, out, mask,
                          has_mask, seen, a_act, r_act, flags, xp, T, B, H)
    states = [h, c] if kind == LSTM else [h]
    last = out[-1] if call.time_major else out[:, -1]
    return last, out, call.pack_states(states)


def _run_persistent(launcher, plan, dtype, kind, xproj, U, bias_x, bias_r, h0, c0, out, mask,
                    has_mask, seen, a_act, r_act, flags, xp):
    time_major, go_back, ret_all, zero_out = flags
    B, H = h0.shape
    hbuf = xp.empty((2, B, H), dtype=dtype)
    hbuf[0] = h0
    c = c0.copy() if c0 is not None else xp.zeros((1, 1), dtype=dtype)
    rh = xp.empty((B, H), dtype=dtype) if kind == GRU_BEFORE else xp.zeros((1, 1), dtype=dtype)
    kernel = persistent.persistent_kernel(dtype, kind, plan.coop)
    view = launcher.view
    launcher.launch(
        kernel, plan.blocks, plan.threads,
        view(xproj), time_major, go_back, view(U), view(bias_x), view(bias_r), view(hbuf), view(c),
        view(rh), view(out), time_major, ret_all, view(mask), has_mask, view(seen), zero_out,
        a_act, r_act, plan.batch_tile, plan.unit_tile, plan.ksplit, plan.unit_blocks,
        shared_bytes=persistent.shared_bytes(plan, H, kind, dtype.itemsize),
    )
    T = xproj.shape[0] if time_major else xproj.shape[1]
    h = hbuf[T % 2].copy()
    return h, (c if c0 is not None else None)


def _run_steps(launcher, dtype, kind, xproj, U, bias_x, bias_r, h0, c0, out, mask, has_mask,
               seen, a_act, r_act, flags, xp, T, B, H):
    time_major, go_back, ret_all, zero_out = flags
    kernels = step.step_kernels(dtype)
    view = launcher.view
    h = h0.copy()
    c = c0.copy() if c0 is not None else None
    blocks = step.blocks_for(B * H)
    v_x, v_h, v_out, v_mask, v_seen = view(xproj), view(h), view(out), view(mask), view(seen)
    v_bx, v_br = view(bias_x), view(bias_r)
    if kind == GRU_BEFORE:
        U_zr = xp.ascontiguousarray(U[:, : 2 * H])
        U_h = xp.ascontiguousarray(U[:, 2 * H:])
        rec = xp.empty((B, 2 * H), dtype=dtype)
        rec2 = xp.empty((B, H), dtype=dtype)
        zbuf = xp.empty((B, H), dtype=dtype)
        rhb = xp.empty((B, H), dtype=dtype)
        v_rec, v_rec2, v_z, v_rh = view(rec), view(rec2), view(zbuf), view(rhb)
    else:
        rec = xp.empty((B, U.shape[1]), dtype=dtype)
        v_rec = view(rec)
    v_c = view(c) if c is not None else None

    if blocks == 0:  # B == 0: nothing to compute
        return h, c
    configure = launcher.configure
    if kind == GRU_BEFORE:
        gates_k = configure(kernels["gru_gates"], blocks, step.THREADS)
        finish_k = configure(kernels["gru_finish"], blocks, step.THREADS)
    else:
        name = {LSTM: "lstm", GRU: "gru"}.get(kind, "simple_rnn")
        step_k = configure(kernels[name], blocks, step.THREADS)

    for s in range(T):
        t = T - 1 - s if go_back else s
        write = ret_all or s == T - 1
        slot = s if ret_all else 0
        if kind == GRU_BEFORE:
            xp.dot(h, U_zr, out=rec)
            gates_k(v_x, time_major, t, v_rec, v_bx, v_h, v_z, v_rh, r_act)
            xp.dot(rhb, U_h, out=rec2)
            finish_k(v_x, time_major, t, v_rec2, v_bx, v_z, v_h, v_out, time_major, slot, write,
                     v_mask, has_mask, v_seen, zero_out, a_act)
            continue
        xp.dot(h, U, out=rec)
        if kind == LSTM:
            step_k(v_x, time_major, t, v_rec, v_bx, v_h, v_c, v_out, time_major, slot, write,
                   v_mask, has_mask, v_seen, zero_out, a_act, r_act)
        elif kind == GRU:
            step_k(v_x, time_major, t, v_rec, v_bx, v_br, v_h, v_out, time_major, slot, write,
                   v_mask, has_mask, v_seen, zero_out, a_act, r_act)
        else:
            step_k(v_x, time_major, t, v_rec, v_bx, v_h, v_out, time_major, slot, write,
                   v_mask, has_mask, v_seen, zero_out, a_act)
    return h, c
