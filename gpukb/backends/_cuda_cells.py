"""The cuda backend's fused path for the Keras cells (LSTM, GRU, SimpleRNN): choose, then run.

``choose(call, path, plan_options)`` decides between the two kernels of ``gpukb.kernels.cuda`` for
a call a fused kernel may take (``gpukb._fused.cell_problem`` is None), and says why:

- the persistent kernel (``persistent``): one launch for the whole sequence, for small batches,
  when ``persistent.plan`` finds a tiling;
- per step (``step``): the recurrent GEMM ``h @ U`` into a preallocated buffer, then ONE fused
  kernel for gates, masking, state hold and the output write.

``run(call, tiling, allow_tf32)`` runs it: the input projection ``x @ W`` of all T steps as ONE
GEMM (CuPy -> cuBLAS), then the chosen kernel. Everything is queued on CuPy's current stream;
nothing here waits for the GPU. ``run_cell`` does both (tests and tools force paths with it).
"""

from __future__ import annotations

import threading
from typing import Any, NamedTuple

import numpy as np

from gpukb.kernels.cells import GRU, GRU_BEFORE, LSTM
from gpukb.kernels.cells.activations import code as activation_code
from gpukb.kernels.cuda import _runtime, persistent, step

from .._fused import cell_problem, loop_options

PATHS = ("auto", "step", "persistent")

_last = threading.local()


def last_path():
    """What the last fused call of this thread ran: "step" or the persistent ``Plan`` (diagnostics)."""
    return getattr(_last, "path", None)


class Choice(NamedTuple):
    """The kernel for one call: ``tiling`` (a ``persistent.Plan``) or None for per step; why."""

    tiling: Any
    reason: str


def choose(call, path: str = "auto", plan_options=None) -> Choice:
    """The kernel for an eligible call (see the module docstring). ``path``: "auto" (the persistent
    kernel where ``persistent.plan`` finds a tiling, else per step), "step" (always per step) or
    "persistent" (the persistent kernel where any tiling fits, ignoring the batch-size rule; per
    step otherwise). ``plan_options`` override the planner's budgets."""
    if path not in PATHS:
        raise ValueError(f"cuda backend: unknown cell path {path!r}; expected one of {PATHS}.")
    cell = call.step_function
    if path == "step":
        return Choice(None, "cell_path is 'step'")
    options = dict(plan_options or {})
    if path == "persistent":
        options.setdefault("max_batch", call.batch_size)
    B, H, kind = call.batch_size, cell.units, cell.kernel_layout.kind
    tiling = persistent.plan(B, H, kind, np.dtype(cell.dtype).itemsize, **options)
    if tiling is not None:
        return Choice(tiling, f"batch {B}, {H} units: one launch of {tiling.blocks} block(s) of "
                              f"{tiling.threads} threads runs the whole sequence")
    max_batch = options.get("max_batch", persistent.PERSISTENT_MAX_BATCH)
    if B > max_batch:
        return Choice(None, f"not persistent: batch {B} is over its limit of {max_batch}")
    return Choice(None, f"not persistent: no tiling of {H} units fits its shared memory, thread "
                        "and block budgets")


def run_cell(call, cell, *, path: str = "auto", allow_tf32: bool = False, plan_options=None):
    """Run ``cell`` over ``call`` on the kernel ``choose`` picks; NotImplemented when no fused
    kernel may run the call (the generic loop then runs the cell and raises its errors)."""
    if path not in PATHS:
        raise ValueError(f"cuda backend: unknown cell path {path!r}; expected one of {PATHS}.")
    if call.step_function is not cell or cell_problem(call) is not None:
        return NotImplemented
    return run(call, choose(call, path, plan_options).tiling, allow_tf32)


def run(call, tiling, allow_tf32: bool = False):
    """Run an eligible call: the persistent kernel with ``tiling``, or per step when it is None."""
    dtype = np.dtype(call.step_function.dtype)
    with _runtime.gemm_precision(dtype, allow_tf32):
        return _run(call, call.xp, dtype, tiling)


class _Arrays(NamedTuple):
    """What both kernels read and write (placeholders where the cell kind has no such array)."""

    xproj: Any    # x @ W for all steps, laid out like x
    U: Any
    bias_x: Any   # added to x @ W
    bias_r: Any   # added to h @ U (GRU with reset_after)
    out: Any
    mask: Any
    seen: Any     # per sample: a step was processed (the masked output's previous value)


def _biases(cell, xp, dtype, kind):
    """(bias added to x @ W, bias added to h @ U) as contiguous 1-D arrays (zeros when absent)."""
    width = cell.kernel.shape[1]
    if cell.bias is None:
        zeros = xp.zeros(width, dtype=dtype)
        return zeros, (zeros if kind == GRU else xp.zeros(1, dtype=dtype))
    if kind == GRU:
        return xp.ascontiguousarray(cell.bias[0]), xp.ascontiguousarray(cell.bias[1])
    return xp.ascontiguousarray(cell.bias), xp.zeros(1, dtype=dtype)


def _run(call, xp, dtype, tiling):
    cell = call.step_function
    kind = cell.kernel_layout.kind
    B, T, H, D = call.batch_size, call.time_steps, cell.units, cell.input_dim
    x = call.input_leaves[0]
    W = xp.ascontiguousarray(cell.kernel)
    G = W.shape[1]
    xproj = xp.dot(x.reshape((x.shape[0] * x.shape[1], D)), W).reshape((x.shape[0], x.shape[1], G))
    out_steps = T if call.return_all_outputs else 1
    out = xp.empty((out_steps, B, H) if call.time_major else (B, out_steps, H), dtype=dtype)
    has_mask = call.step_mask is not None
    mask = xp.ascontiguousarray(call.step_mask) if has_mask else xp.ones((1, 1), dtype=bool)
    arrays = _Arrays(xproj, xp.ascontiguousarray(cell.recurrent_kernel),
                     *_biases(cell, xp, dtype, kind), out, mask, xp.zeros(max(B, 1), dtype=bool))
    activations = (activation_code(cell.activation),
                   activation_code(getattr(cell, "recurrent_activation", "linear")))
    flags = (loop_options(call).normalized(), has_mask, activations)
    h0 = call.initial_states[0]
    c0 = call.initial_states[1] if kind == LSTM else None
    launcher = _runtime.Launcher(xp)
    _last.path = tiling if tiling is not None else "step"
    if tiling is not None:
        h, c = _run_persistent(launcher, tiling, kind, arrays, h0, c0, flags, xp)
    else:
        h, c = _run_steps(launcher, kind, arrays, h0, c0, flags, xp)
    last = out[-1] if call.time_major else out[:, -1]
    return last, out, call.pack_states([h, c] if kind == LSTM else [h])


def _placeholder(xp, dtype):
    return xp.zeros((1, 1), dtype=dtype)


def _run_persistent(launcher, tiling, kind, arrays, h0, c0, flags, xp):
    B, H = h0.shape
    dtype = h0.dtype
    hbuf = xp.empty((2, B, H), dtype=dtype)
    hbuf[0] = h0
    c = c0.copy() if c0 is not None else _placeholder(xp, dtype)
    rh = xp.empty((B, H), dtype=dtype) if kind == GRU_BEFORE else _placeholder(xp, dtype)
    a, view = arrays, launcher.view
    launcher.launch(
        persistent.persistent_kernel(dtype, kind, tiling.coop), tiling.blocks, tiling.threads,
        view(a.xproj), view(a.U), view(a.bias_x), view(a.bias_r), view(hbuf), view(c), view(rh),
        view(a.out), view(a.mask), view(a.seen), *flags, tiling,
        shared_bytes=persistent.shared_bytes(tiling, H, kind, np.dtype(dtype).itemsize))
    T = a.xproj.shape[0] if flags[0].time_major else a.xproj.shape[1]
    return hbuf[T % 2].copy(), (c if c0 is not None else None)


def _run_steps(launcher, kind, arrays, h0, c0, flags, xp):
    options, has_mask, activations = flags
    B, H = h0.shape
    dtype = h0.dtype
    T = arrays.xproj.shape[0] if options.time_major else arrays.xproj.shape[1]
    h = h0.copy()
    c = c0.copy() if c0 is not None else None
    blocks = step.blocks_for(B * H)
    if blocks == 0:  # B == 0: nothing to compute
        return h, c
    a, view = arrays, launcher.view
    v_x, v_h = view(a.xproj), view(h)
    U = a.U
    if kind == GRU_BEFORE:   # U in two parts, around the reset gate
        U, U_h = xp.ascontiguousarray(U[:, : 2 * H]), xp.ascontiguousarray(U[:, 2 * H:])
        zbuf, rh, rec_h = (xp.empty((B, H), dtype=dtype) for _ in range(3))
        gates = launcher.configure(step.gru_gates, blocks, step.THREADS)
    else:
        zbuf = _placeholder(xp, dtype)
    rec = xp.empty((B, U.shape[1]), dtype=dtype)
    if kind == GRU_BEFORE:
        gate_arrays = (view(rec), view(a.bias_x), v_h, view(zbuf), view(rh))
    kernel = launcher.configure(step.step_kernel(dtype, kind), blocks, step.THREADS)
    step_arrays = (view(rec_h if kind == GRU_BEFORE else rec), view(a.bias_x), view(a.bias_r),
                   v_h, view(c if c is not None else _placeholder(xp, dtype)), view(zbuf),
                   view(a.out))
    v_mask, v_seen = view(a.mask), view(a.seen)
    # Arguments converted once; each step passes only t, the output slot and whether to write.
    step_launch = launcher.repeated(
        kernel, (v_x, 0, *step_arrays, 0, False, v_mask, v_seen, *flags), varying=(1, 9, 10))
    if kind == GRU_BEFORE:
        gates_launch = launcher.repeated(gates, (v_x, 0, *gate_arrays, options, activations), varying=(1,))
    all_outputs = options.return_all_outputs
    for s in range(T):
        t = T - 1 - s if options.go_backwards else s
        xp.dot(h, U, out=rec)
        if kind == GRU_BEFORE:
            gates_launch(t)
            xp.dot(rh, U_h, out=rec_h)
        step_launch(t, s if all_outputs else 0, all_outputs or s == T - 1)
    return h, c
