"""The fused Keras cells on the CPU: one time loop for every cell kind, and ``run_cell``.

    last_output, outputs, new_states = run_cell(kind, x, kernel, recurrent_kernel, bias, states,
                                                step_mask, options, activation, recurrent_activation)

``kind``: a ``kernels.cells`` kind; weights in the Keras layout (``kernels.cells.Layout``);
``states``: the kind's ``(B, H)`` states in order; ``step_mask``: ``(T, B)`` bool or None;
``options``: ``kernels.options.LoopOptions``; activations by name (``kernels.cells.activations``).
``outputs`` is ``(B, T_out, H)`` (``(T_out, B, H)`` when time-major) in processing order, with
``T_out = T``, or 1 without ``return_all_outputs``. Inputs must all be float32 or all float64.

How a call runs: per block of steps, the input projection ``bias + x_t @ kernel`` as one GEMM
(``_gemm.project_block``); per step, ``h @ recurrent_kernel`` added onto it in place (GRU with
reset_after: into a buffer of its own, which starts from the recurrent bias; GRU without: in two
halves around the reset gate); then per sample either the masking rule (``kernels/cells/masking``)
or the cell's update along the row (``kernels/cpu/{lstm,gru,simple_rnn}.py``). The loop is written
once and compiled once per cell kind, which it sees as a compile-time constant.
"""

import threading

import numpy as np

from ..cells import GRU, GRU_BEFORE, LAYOUTS, LSTM
from ..cells import masking
from ..cells.activations import code
from . import _common as C
from . import gru, lstm, simple_rnn
from ._gemm import I0, ad, fused_rows, pack, project_block
from ._numba_cache import cached_njit


@cached_njit(error_model="numpy", inline="always")
def _masked_row(out, h, zero_out, seen):
    """The output row of a sample at a masked step (its states are held)."""
    for j in range(out.shape[0]):
        out[j] = masking.masked_output(masking.cell_previous_output(h[j], seen), zero_out)


def _make_time_loop(kind):
    """The time loop of cell kind ``kind`` over rows [n0, n1) and steps [s_begin, s_end)."""

    def time_loop(x, weights, states, buffers, out, mask, seen, flags, activations, n0, n1,
                  s_begin, s_end):
        PW, PU, PU2, bias_x, bias_h = weights
        h, c = states
        xpb, zb, rb = buffers   # projections of a block of steps; per-kind scratch (see _prepare)
        act, ract = activations
        tm = flags.time_major
        back = flags.go_backwards
        T = x.shape[0] if tm else x.shape[1]
        B = h.shape[0]
        H = h.shape[1]
        es = x.itemsize
        nv = PU.shape[2] // (8 if es == 4 else 4)  # vectors per panel row of U
        tau = xpb.shape[0]
        Gp = xpb.shape[2]
        for s0 in range(s_begin, s_end, tau):   # see _common.run_chunks
            s1 = min(s0 + tau, s_end)
            project_block(x, tm, back, PW, bias_x, xpb, s0, s1, n0, n1)   # bias + x_t @ W
            for s in range(s0, s1):
                t = T - 1 - s if back else s
                z = xpb[s - s0]
                slot = ad(xpb) + (s - s0) * B * Gp * es
                if kind == GRU:   # zb = recurrent bias + h @ U: the reset gate multiplies it
                    fused_rows(xpb, ad(zb), zb.shape[1], ad(bias_h), I0, ad(h), H, ad(PU), H,
                               PU.shape[0], nv, n0, n1)
                else:   # z += h @ U (GRU_BEFORE: the z and r columns), in place
                    fused_rows(xpb, slot, Gp, slot, Gp, ad(h), H, ad(PU), H, PU.shape[0], nv,
                               n0, n1)
                if kind == GRU_BEFORE:   # rb = r * h, then zb = x_h + rb @ U_h
                    for n in range(n0, n1):
                        gru.reset_row(z[n], h[n], rb[n], ract)
                    fused_rows(xpb, ad(zb), zb.shape[1], slot + 2 * H * es, Gp, ad(rb), H,
                               ad(PU2), H, PU2.shape[0], nv, n0, n1)
                so = s if flags.return_all_outputs else 0   # else the last step's row stays
                for n in range(n0, n1):
                    hr = h[n]
                    orow = out[so, n] if tm else out[n, so]
                    if flags.has_mask and not mask[t, n]:
                        _masked_row(orow, hr, flags.zero_output_for_mask, seen[n])
                        continue
                    seen[n] = True
                    if kind == LSTM:
                        lstm.update_row(z[n], c[n], hr, orow, act, ract)
                    elif kind == GRU:
                        gru.update_row(z[n], zb[n], hr, orow, act, ract)
                    elif kind == GRU_BEFORE:
                        gru.update_reset_before_row(z[n], zb[n], hr, orow, act)
                    else:
                        simple_rnn.update_row(z[n], hr, orow, act)

    return time_loop


_loops: dict = {}
_loops_lock = threading.Lock()


def time_loop(kind):
    """The compiled time loop of a cell kind (compiles on its first call; cached on disk)."""
    with _loops_lock:
        loop = _loops.get(kind)
        if loop is None:
            loop = _loops[kind] = cached_njit(**C.KERNEL_OPTIONS, nogil=True)(
                _make_time_loop(kind))
        return loop


def _prepare(layout, kernel, recurrent_kernel, bias, dt, T, B, H, chunks):
    """((PW, PU, PU2, bias_x, bias_h), (xpb, zb, rb)): packed weights, biases and buffers of a
    layout; what a layout does not use is a small placeholder of the right type."""
    G = layout.gates * H
    no_panels, no_bias, no_rows = np.zeros((1, 1, 1), dt), np.zeros(1, dt), np.zeros((1, 1), dt)
    if layout.reset_before:   # U in two parts: the z and r columns, then the candidate's
        PW, PU, Gp = C.pack_weights(kernel, recurrent_kernel[:, :2 * H], G, dt, chunks,
                                    recurrent_cols=2 * H)
        PU2 = pack(recurrent_kernel, 2 * H, H, PU.shape[2])
        Hp = PU2.shape[0] * PU2.shape[2]
        # zb's initial value is read from xpb[..., 2H:2H+Hp]
        xpb = C.projection_buffer(T, B, Gp, dt, chunks, width=max(Gp, 2 * H + Hp))
        weights = (PW, PU, PU2, C.padded_bias(bias, G, Gp, dt), no_bias)
        return weights, (xpb, np.empty((B, Hp), dt), np.empty((B, H), dt))
    PW, PU, Gp = C.pack_weights(kernel, recurrent_kernel, G, dt, chunks)
    xpb = C.projection_buffer(T, B, Gp, dt, chunks)
    if not layout.recurrent_bias:
        return (PW, PU, no_panels, C.padded_bias(bias, G, Gp, dt), no_bias), (xpb, no_rows, no_rows)
    rows = (None, None) if bias is None else np.asarray(bias, dtype=dt).reshape(2, G)
    weights = (PW, PU, no_panels, C.padded_bias(rows[0], G, Gp, dt),
               C.padded_bias(rows[1], G, Gp, dt))
    return weights, (xpb, np.empty((B, Gp), dt), no_rows)


def run_cell(kind, x, kernel, recurrent_kernel, bias, states, step_mask, options,
             activation="tanh", recurrent_activation="linear"):
    """Run one Keras cell over a sequence (see the module docstring)."""
    layout = LAYOUTS[kind]
    dt = C.check_dtypes(x, kernel, recurrent_kernel, bias, *states)
    activations = (code(activation), code(recurrent_activation))
    H = recurrent_kernel.shape[0]
    xc, B, T = C.input_c(x, options.time_major)
    row_flops = 2.0 * layout.gates * H * (H + xc.shape[2])   # per row and step
    chunks = C.row_chunks(B, row_flops * B * T)
    held = [np.array(s, dtype=dt, order="C", copy=True) for s in states]
    h, c = held if layout.n_states == 2 else (held[0], np.zeros((1, 1), dt))
    mask, has_mask = C.mask_arg(step_mask, T, B)
    out = C.out_buffer(B, T, H, dt, options.return_all_outputs, options.time_major)
    seen = np.zeros(B, np.bool_)
    weights, buffers = _prepare(layout, kernel, recurrent_kernel, bias, dt, T, B, H, chunks)
    args = (xc, weights, (h, c), buffers, out, mask, seen, C.Flags.of(options, has_mask),
            activations)
    C.run_chunks(time_loop(kind), args, chunks, T, C.row_step_seconds(row_flops, dt),
                 buffers[0].shape[0])
    last = (out[-1] if options.time_major else out[:, -1]).copy()
    return last, out, tuple(held)
