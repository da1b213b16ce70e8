"""Fused LSTM forward (Keras semantics) for NumPy float32/float64 on the CPU.

Gate order i, f, c, o (Keras layout): kernel (D, 4H), recurrent_kernel (H, 4H), bias (4H,).
c' = f*c + i*act(zc); h' = o*act(c'); i, f, o use recurrent_activation.
"""

import numpy as np

from . import _common as C
from ._gemm import ad, fused_rows, masked_output, project_block
from ._numba_cache import cached_njit
from .activations import SIGMOID, TANH, act_inplace, act_into, activation_code, sigmoid_, tanh_


@cached_njit(fastmath={"contract"}, error_model="numpy", nogil=True)
def _lstm_rows(x, x_tm, PW, PU, b, h, c, xpb, out, out_tm, ret_all, mask, has_mask, seen,
               go_back, zero_out, act, ract, n0, n1, s_begin, s_end):
    T = x.shape[0] if x_tm else x.shape[1]
    B = h.shape[0]
    H = h.shape[1]
    G = 4 * H
    es = x.itemsize
    nv = PU.shape[2] // (8 if es == 4 else 4)  # vectors per panel row of U
    tau = xpb.shape[0]
    Gp = xpb.shape[2]
    for s0 in range(s_begin, s_end, tau):   # steps [s_begin, s_end) of T, see run_chunks
        s1 = min(s0 + tau, s_end)
        project_block(x, x_tm, go_back, PW, b, xpb, s0, s1, n0, n1)   # b + x_t @ W
        for s in range(s0, s1):
            t = T - 1 - s if go_back else s
            slot = ad(xpb) + (s - s0) * B * Gp * es
            # z += h @ U, in place
            fused_rows(xpb, slot, Gp, slot, Gp, ad(h), H, ad(PU), H, PU.shape[0], nv, n0, n1)
            so = s if ret_all else 0   # without ret_all every step writes row 0; the last stays
            for n in range(n0, n1):
                hr = h[n]
                orow = out[so, n] if out_tm else out[n, so]
                if has_mask and not mask[t, n]:
                    masked_output(orow, hr, zero_out, seen[n])
                    continue
                seen[n] = True
                zr = xpb[s - s0, n]
                zi = zr[0:H]
                zf = zr[H:2 * H]
                zg = zr[2 * H:3 * H]
                zo = zr[3 * H:G]
                cr = c[n]
                if act == TANH and ract == SIGMOID:   # the default, in one pass
                    for j in range(H):
                        cn = sigmoid_(zf[j]) * cr[j] + sigmoid_(zi[j]) * tanh_(zg[j])
                        cr[j] = cn
                        v = sigmoid_(zo[j]) * tanh_(cn)
                        hr[j] = v
                        orow[j] = v
                    continue
                act_inplace(ract, zr[0:2 * H])   # i, f
                act_inplace(act, zg)
                act_inplace(ract, zo)
                for j in range(H):
                    cr[j] = zf[j] * cr[j] + zi[j] * zg[j]
                act_into(act, zg, cr)            # zg <- act(c')
                for j in range(H):
                    v = zo[j] * zg[j]
                    hr[j] = v
                    orow[j] = v


def lstm(x, kernel, recurrent_kernel, bias, h0, c0, step_mask, *, go_backwards=False,
         zero_output_for_mask=False, return_all_outputs=True, time_major=False,
         activation="tanh", recurrent_activation="sigmoid"):
    """Keras LSTM forward. Returns (last_output (B, H), outputs, (h, c)).

    outputs: (B, T_out, H), or (T_out, B, H) when time_major, in processing order
    (T_out = T, or 1 when return_all_outputs=False).
    """
    dt = C.check_dtypes(x, kernel, recurrent_kernel, bias, h0, c0)
    act = activation_code(activation)
    ract = activation_code(recurrent_activation)
    H = recurrent_kernel.shape[0]
    G = 4 * H
    xc, B, T = C.input_c(x, time_major)
    row_flops = 8.0 * H * (H + xc.shape[2])   # per row and step
    chunks = C.row_chunks(B, row_flops * B * T)
    PW, PU, Gp = C.pack_weights(kernel, recurrent_kernel, G, dt, chunks)
    b = C.padded_bias(bias, G, Gp, dt)
    xpb = C.projection_buffer(T, B, Gp, dt, chunks)
    h = np.array(h0, dtype=dt, order="C", copy=True)
    c = np.array(c0, dtype=dt, order="C", copy=True)
    mask, has_mask = C.mask_arg(step_mask, T, B)
    out = C.out_buffer(B, T, H, dt, return_all_outputs, time_major)
    seen = np.zeros(B, np.bool_)
    args = (xc, bool(time_major), PW, PU, b, h, c, xpb, out, bool(time_major),
            bool(return_all_outputs), mask, has_mask, seen, bool(go_backwards),
            bool(zero_output_for_mask), act, ract)
    C.run_chunks(_lstm_rows, args, chunks, T, C.row_step_seconds(row_flops, dt),
                 xpb.shape[0])
    last = (out[-1] if time_major else out[:, -1]).copy()
    return last, out, (h, c)
