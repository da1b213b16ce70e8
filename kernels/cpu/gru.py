"""Fused GRU forward (Keras semantics) for NumPy float32/float64 on the CPU.

Gate order z, r, h (Keras layout): kernel (D, 3H), recurrent_kernel (H, 3H).
- reset_after=True: bias (2, 3H) (row 0 input bias, row 1 recurrent bias) or None;
  rec = h @ U + b[1]; z = ra(x_z + rec_z); r = ra(x_r + rec_r); hh = act(x_h + r * rec_h).
- reset_after=False: bias (3H,) or None (added to the input part);
  z = ra(x_z + h @ U_z); r = ra(x_r + h @ U_r); hh = act(x_h + (r * h) @ U_h).
h' = z * h + (1 - z) * hh. (x_* includes the input bias.)
"""

import numpy as np

from . import _common as C
from ._gemm import I0, ad, fused_rows, masked_output, pack, project_block
from ._numba_cache import cached_njit
from .activations import SIGMOID, TANH, act_inplace, activation_code, sigmoid_, tanh_


@cached_njit(fastmath={"contract"}, error_model="numpy", nogil=True)
def _gru_after_rows(x, x_tm, PW, PU, bx, bh, h, xpb, zh, out, out_tm, ret_all, mask, has_mask,
                    seen, go_back, zero_out, act, ract, n0, n1, s_begin, s_end):
    T = x.shape[0] if x_tm else x.shape[1]
    H = h.shape[1]
    es = x.itemsize
    nv = PU.shape[2] // (8 if es == 4 else 4)  # vectors per panel row of U
    tau = xpb.shape[0]
    ldh = zh.shape[1]
    one = np.ones(1, xpb.dtype)[0]
    for s0 in range(s_begin, s_end, tau):   # steps [s_begin, s_end) of T, see run_chunks
        s1 = min(s0 + tau, s_end)
        project_block(x, x_tm, go_back, PW, bx, xpb, s0, s1, n0, n1)   # bx + x_t @ W
        for s in range(s0, s1):
            t = T - 1 - s if go_back else s
            # zh = bh + h @ U
            fused_rows(xpb, ad(zh), ldh, ad(bh), I0, ad(h), H, ad(PU), H, PU.shape[0], nv,
                       n0, n1)
            so = s if ret_all else 0   # without ret_all every step writes row 0; the last stays
            for n in range(n0, n1):
                hr = h[n]
                orow = out[so, n] if out_tm else out[n, so]
                if has_mask and not mask[t, n]:
                    masked_output(orow, hr, zero_out, seen[n])
                    continue
                seen[n] = True
                xr = xpb[s - s0, n]
                rr = zh[n]
                if act == TANH and ract == SIGMOID:   # the default, in one pass
                    xz = xr[0:H]
                    xrr = xr[H:2 * H]
                    xhh = xr[2 * H:3 * H]
                    hz = rr[0:H]
                    hrr = rr[H:2 * H]
                    hhh = rr[2 * H:3 * H]
                    for j in range(H):
                        zj = sigmoid_(xz[j] + hz[j])
                        rj = sigmoid_(xrr[j] + hrr[j])
                        hj = tanh_(xhh[j] + rj * hhh[j])
                        v = zj * hr[j] + (one - zj) * hj
                        hr[j] = v
                        orow[j] = v
                    continue
                g = xr[0:2 * H]
                rg = rr[0:2 * H]
                for j in range(2 * H):
                    g[j] += rg[j]
                act_inplace(ract, g)                      # z, r
                zz = xr[0:H]
                r = xr[H:2 * H]
                xh = xr[2 * H:3 * H]
                rh = rr[2 * H:3 * H]
                for j in range(H):
                    xh[j] += r[j] * rh[j]
                act_inplace(act, xh)                      # hh
                for j in range(H):
                    hr[j] = zz[j] * hr[j] + (one - zz[j]) * xh[j]
                for j in range(H):
                    orow[j] = hr[j]


@cached_njit(fastmath={"contract"}, error_model="numpy", nogil=True)
def _gru_before_rows(x, x_tm, PW, PUzr, PUh, b, h, xpb, zc, rh, out, out_tm, ret_all, mask,
                     has_mask, seen, go_back, zero_out, act, ract, n0, n1, s_begin, s_end):
    T = x.shape[0] if x_tm else x.shape[1]
    B = h.shape[0]
    H = h.shape[1]
    es = x.itemsize
    nv = PUzr.shape[2] // (8 if es == 4 else 4)
    tau = xpb.shape[0]
    Gp = xpb.shape[2]
    ldc = zc.shape[1]
    one = np.ones(1, xpb.dtype)[0]
    for s0 in range(s_begin, s_end, tau):   # steps [s_begin, s_end) of T, see run_chunks
        s1 = min(s0 + tau, s_end)
        project_block(x, x_tm, go_back, PW, b, xpb, s0, s1, n0, n1)   # b + x_t @ W
        for s in range(s0, s1):
            t = T - 1 - s if go_back else s
            slot = ad(xpb) + (s - s0) * B * Gp * es
            # z, r columns += h @ U[:, :2H], in place
            fused_rows(xpb, slot, Gp, slot, Gp, ad(h), H, ad(PUzr), H, PUzr.shape[0], nv,
                       n0, n1)
            for n in range(n0, n1):
                xr = xpb[s - s0, n]
                act_inplace(ract, xr[0:2 * H])           # z, r
                r = xr[H:2 * H]
                hr = h[n]
                rr = rh[n]
                for j in range(H):
                    rr[j] = r[j] * hr[j]
            # zc = x_h + (r * h) @ U[:, 2H:]
            fused_rows(xpb, ad(zc), ldc, slot + 2 * H * es, Gp, ad(rh), H, ad(PUh), H,
                       PUh.shape[0], nv, n0, n1)
            so = s if ret_all else 0   # without ret_all every step writes row 0; the last stays
            for n in range(n0, n1):
                hr = h[n]
                orow = out[so, n] if out_tm else out[n, so]
                if has_mask and not mask[t, n]:
                    masked_output(orow, hr, zero_out, seen[n])
                    continue
                seen[n] = True
                zz = xpb[s - s0, n, 0:H]
                hh = zc[n, 0:H]
                act_inplace(act, hh)
                for j in range(H):
                    hr[j] = zz[j] * hr[j] + (one - zz[j]) * hh[j]
                for j in range(H):
                    orow[j] = hr[j]


def gru(x, kernel, recurrent_kernel, bias, h0, step_mask, *, reset_after=True,
        go_backwards=False, zero_output_for_mask=False, return_all_outputs=True,
        time_major=False, activation="tanh", recurrent_activation="sigmoid"):
    """Keras GRU forward. Returns (last_output (B, H), outputs, (h,)).

    outputs: (B, T_out, H), or (T_out, B, H) when time_major, in processing order
    (T_out = T, or 1 when return_all_outputs=False).
    """
    dt = C.check_dtypes(x, kernel, recurrent_kernel, bias, h0)
    act = activation_code(activation)
    ract = activation_code(recurrent_activation)
    H = recurrent_kernel.shape[0]
    G = 3 * H
    xc, B, T = C.input_c(x, time_major)
    row_flops = 6.0 * H * (H + xc.shape[2])   # per row and step
    chunks = C.row_chunks(B, row_flops * B * T)
    h = np.array(h0, dtype=dt, order="C", copy=True)
    mask, has_mask = C.mask_arg(step_mask, T, B)
    out = C.out_buffer(B, T, H, dt, return_all_outputs, time_major)
    seen = np.zeros(B, np.bool_)
    flags = (bool(time_major), bool(return_all_outputs), mask, has_mask, seen,
             bool(go_backwards), bool(zero_output_for_mask), act, ract)
    if reset_after:
        PW, PU, Gp = C.pack_weights(kernel, recurrent_kernel, G, dt, chunks)
        b2 = None if bias is None else np.asarray(bias, dtype=dt).reshape(2, G)
        bx = C.padded_bias(None if b2 is None else b2[0], G, Gp, dt)
        bh = C.padded_bias(None if b2 is None else b2[1], G, Gp, dt)
        xpb = C.projection_buffer(T, B, Gp, dt, chunks)
        zh = np.empty((B, Gp), dt)
        args = (xc, bool(time_major), PW, PU, bx, bh, h, xpb, zh, out) + flags
        C.run_chunks(_gru_after_rows, args, chunks, T, C.row_step_seconds(row_flops, dt),
                     xpb.shape[0])
    else:
        PW, PUzr, Gp = C.pack_weights(kernel, recurrent_kernel[:, :2 * H], G, dt, chunks,
                                      recurrent_cols=2 * H)
        PUh = pack(recurrent_kernel, 2 * H, H, PUzr.shape[2])
        Hp = PUh.shape[0] * PUh.shape[2]
        b = C.padded_bias(bias, G, Gp, dt)
        # zc's init reads xpb[..., 2H:2H+Hp]
        xpb = C.projection_buffer(T, B, Gp, dt, chunks, width=max(Gp, 2 * H + Hp))
        zc = np.empty((B, Hp), dt)
        rh = np.empty((B, H), dt)
        args = (xc, bool(time_major), PW, PUzr, PUh, b, h, xpb, zc, rh, out) + flags
        C.run_chunks(_gru_before_rows, args, chunks, T, C.row_step_seconds(row_flops, dt),
                     xpb.shape[0])
    last = (out[-1] if time_major else out[:, -1]).copy()
    return last, out, (h,)
