"""Fused SimpleRNN forward (Keras semantics) for NumPy float32/float64 on the CPU.

kernel (D, H), recurrent_kernel (H, H), bias (H,) or None; h' = act(x @ W + b + h @ U).
"""

import numpy as np
from numba import njit

from . import _common as C
from ._gemm import fused_rows, masked_output, pack, panel_width, x_step
from .activations import act_into, activation_code


@njit(fastmath={"contract"}, error_model="numpy", cache=True, nogil=True)
def _rnn_rows(x, x_tm, PW, PU, b, h, z, out, out_tm, ret_all, mask, has_mask, seen, go_back,
              zero_out, act, n0, n1):
    T = x.shape[0] if x_tm else x.shape[1]
    D = x.shape[2]
    H = h.shape[1]
    npan = PU.shape[0]
    ldz = z.shape[1]
    for s in range(T):
        t = T - 1 - s if go_back else s
        xt, lda = x_step(x, x_tm, t)
        fused_rows(z, z.ctypes.data, ldz, b.ctypes.data, 0, xt, lda, PW.ctypes.data, D, npan,
                   h.ctypes.data, H, PU.ctypes.data, H, npan, npan, n0, n1)
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
            act_into(act, hr, z[n, 0:H])
            if write:
                for j in range(H):
                    orow[j] = hr[j]


def simple_rnn(x, kernel, recurrent_kernel, bias, h0, step_mask, *, go_backwards=False,
               zero_output_for_mask=False, return_all_outputs=True, time_major=False,
               activation="tanh"):
    """Keras SimpleRNN forward. Returns (last_output (B, H), outputs, (h,)).

    outputs: (B, T_out, H), or (T_out, B, H) when time_major, in processing order
    (T_out = T, or 1 when return_all_outputs=False).
    """
    dt = C.check_dtypes(x, kernel, recurrent_kernel, bias, h0)
    act = activation_code(activation)
    H = recurrent_kernel.shape[0]
    xc, B, T = C.input_c(x, time_major)
    NR = panel_width(dt)
    PW = pack(kernel, 0, H, NR)
    PU = pack(recurrent_kernel, 0, H, NR)
    Gp = PU.shape[0] * NR
    b = C.padded_bias(bias, H, Gp, dt)
    h = np.array(h0, dtype=dt, order="C", copy=True)
    mask, has_mask = C.mask_arg(step_mask, T, B)
    out = C.out_buffer(B, T, H, dt, return_all_outputs, time_major)
    seen = np.zeros(B, np.bool_)
    z = np.empty((B, Gp), dt)
    args = (xc, bool(time_major), PW, PU, b, h, z, out, bool(time_major),
            bool(return_all_outputs), mask, has_mask, seen, bool(go_backwards),
            bool(zero_output_for_mask), act)
    C.run_chunks(_rnn_rows, args, B, 2.0 * T * B * H * (H + xc.shape[2]))
    last = (out[-1] if time_major else out[:, -1]).copy()
    return last, out, (h,)
