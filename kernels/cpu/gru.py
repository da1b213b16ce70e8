"""Fused GRU forward (Keras semantics) for NumPy float32/float64 on the CPU.

Gate order z, r, h (Keras layout): kernel (D, 3H), recurrent_kernel (H, 3H).
- reset_after=True: bias (2, 3H) (row 0 input bias, row 1 recurrent bias) or None;
  rec = h @ U + b[1]; z = ra(x_z + rec_z); r = ra(x_r + rec_r); hh = act(x_h + r * rec_h).
- reset_after=False: bias (3H,) or None (added to the input part);
  z = ra(x_z + h @ U_z); r = ra(x_r + h @ U_r); hh = act(x_h + (r * h) @ U_h).
h' = z * h + (1 - z) * hh. (x_* includes the input bias.)
"""

import numpy as np
from numba import njit

from . import _common as C
from ._gemm import fused_rows, masked_output, pack, panel_width, x_step
from .activations import act_inplace, activation_code


@njit(fastmath={"contract"}, error_model="numpy", cache=True, nogil=True)
def _gru_after_rows(x, x_tm, PW, PU, bx, bh, h, zx, zh, out, out_tm, ret_all, mask, has_mask,
                    seen, go_back, zero_out, act, ract, n0, n1):
    T = x.shape[0] if x_tm else x.shape[1]
    D = x.shape[2]
    H = h.shape[1]
    npan = PU.shape[0]
    ldz = zx.shape[1]
    one = np.ones(1, zx.dtype)[0]  # 1 in x's dtype
    for s in range(T):
        t = T - 1 - s if go_back else s
        xt, lda = x_step(x, x_tm, t)
        # zx = bx + x_t @ W ; zh = bh + h @ U
        fused_rows(zx, zx.ctypes.data, ldz, bx.ctypes.data, 0, xt, lda, PW.ctypes.data, D,
                   npan, xt, lda, PW.ctypes.data, 0, 0, npan, n0, n1)
        fused_rows(zh, zh.ctypes.data, ldz, bh.ctypes.data, 0, h.ctypes.data, H,
                   PU.ctypes.data, H, npan, h.ctypes.data, H, PU.ctypes.data, 0, 0, npan,
                   n0, n1)
        write = ret_all or s == T - 1
        so = s if ret_all else 0
        for n in range(n0, n1):
            hr = h[n]
            orow = out[so, n] if out_tm else out[n, so]
            if has_mask and not mask[t, n]:
                if write:
                    masked_output(orow, hr, zero_out, seen[n])
                continue
            seen[n] = True
            xr = zx[n]
            rr = zh[n]
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
            if write:
                for j in range(H):
                    orow[j] = hr[j]


@njit(fastmath={"contract"}, error_model="numpy", cache=True, nogil=True)
def _gru_before_rows(x, x_tm, PW, PUzr, PUh, b, h, zx, zc, rh, out, out_tm, ret_all, mask,
                     has_mask, seen, go_back, zero_out, act, ract, n0, n1):
    T = x.shape[0] if x_tm else x.shape[1]
    D = x.shape[2]
    H = h.shape[1]
    npan = PW.shape[0]
    npzr = PUzr.shape[0]
    nph = PUh.shape[0]
    ldz = zx.shape[1]
    ldc = zc.shape[1]
    es = x.itemsize
    one = np.ones(1, zx.dtype)[0]
    for s in range(T):
        t = T - 1 - s if go_back else s
        xt, lda = x_step(x, x_tm, t)
        # zx = b + x_t @ W + h @ U[:, :2H]  (the h @ U product stops after the z, r panels)
        fused_rows(zx, zx.ctypes.data, ldz, b.ctypes.data, 0, xt, lda, PW.ctypes.data, D,
                   npan, h.ctypes.data, H, PUzr.ctypes.data, H, npzr, npan, n0, n1)
        for n in range(n0, n1):
            xr = zx[n]
            act_inplace(ract, xr[0:2 * H])           # z, r
            r = xr[H:2 * H]
            hr = h[n]
            rr = rh[n]
            for j in range(H):
                rr[j] = r[j] * hr[j]
        # zc = zx[:, 2H:] + (r * h) @ U[:, 2H:]
        fused_rows(zc, zc.ctypes.data, ldc, zx.ctypes.data + 2 * H * es, ldz, rh.ctypes.data,
                   H, PUh.ctypes.data, H, nph, rh.ctypes.data, H, PUh.ctypes.data, 0, 0, nph,
                   n0, n1)
        write = ret_all or s == T - 1
        so = s if ret_all else 0
        for n in range(n0, n1):
            hr = h[n]
            orow = out[so, n] if out_tm else out[n, so]
            if has_mask and not mask[t, n]:
                if write:
                    masked_output(orow, hr, zero_out, seen[n])
                continue
            seen[n] = True
            zz = zx[n, 0:H]
            hh = zc[n, 0:H]
            act_inplace(act, hh)
            for j in range(H):
                hr[j] = zz[j] * hr[j] + (one - zz[j]) * hh[j]
            if write:
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
    NR = panel_width(dt)
    PW = pack(kernel, 0, G, NR)
    npan = PW.shape[0]
    Gp = npan * NR
    h = np.array(h0, dtype=dt, order="C", copy=True)
    mask, has_mask = C.mask_arg(step_mask, T, B)
    out = C.out_buffer(B, T, H, dt, return_all_outputs, time_major)
    seen = np.zeros(B, np.bool_)
    flags = (bool(time_major), bool(return_all_outputs), mask, has_mask, seen,
             bool(go_backwards), bool(zero_output_for_mask), act, ract)
    flops = 6.0 * T * B * H * (H + xc.shape[2])
    if reset_after:
        PU = pack(recurrent_kernel, 0, G, NR)
        if bias is None:
            bx = np.zeros(Gp, dt)
            bh = np.zeros(Gp, dt)
        else:
            b2 = np.asarray(bias, dtype=dt).reshape(2, G)
            bx = C.padded_bias(b2[0], G, Gp, dt)
            bh = C.padded_bias(b2[1], G, Gp, dt)
        zx = np.empty((B, Gp), dt)
        zh = np.empty((B, Gp), dt)
        args = (xc, bool(time_major), PW, PU, bx, bh, h, zx, zh, out) + flags
        C.run_chunks(_gru_after_rows, args, B, flops)
    else:
        PUzr = pack(recurrent_kernel, 0, 2 * H, NR)
        PUh = pack(recurrent_kernel, 2 * H, H, NR)
        Hp = PUh.shape[0] * NR
        b = C.padded_bias(bias, G, Gp, dt)
        zx = np.zeros((B, max(Gp, 2 * H + Hp)), dt)  # zc's init reads zx[:, 2H:2H+Hp]
        zc = np.empty((B, Hp), dt)
        rh = np.empty((B, H), dt)
        args = (xc, bool(time_major), PW, PUzr, PUh, b, h, zx, zc, rh, out) + flags
        C.run_chunks(_gru_before_rows, args, B, flops)
    last = (out[-1] if time_major else out[:, -1]).copy()
    return last, out, (h,)
