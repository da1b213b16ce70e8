"""The fused backward pass of the Keras cells on the CPU (the vjp of ``run_cell``).

    kept = kept_buffers(kind, T, B, H, dtype)      # filled by run_cell(..., kept=kept)
    grads = cell_backward(kind, x, kernel, recurrent_kernel, bias, states, step_mask, options,
                          activation, recurrent_activation, outputs, d_outputs, d_states, kept)

``outputs``: the forward's outputs with every step kept (``run_cell`` with
``return_all_outputs=True``), in the layout of ``options.time_major``; ``d_outputs``: the
cotangent of every processed step's output, in ``outputs``' layout and order, or None (zeros);
``d_last`` (keyword): the last processed step's output cotangent on top, ``(B, H)`` or None;
``d_states``: the cotangents of the final states; ``kept``: what the forward kept for the
backward (``kept_buffers``), or None to run the forward again for it (recomputation: nothing but
the outputs is held between the forward and the backward). Returns a dict: ``"inputs"`` (x's
shape), ``"states"`` (one per state), ``"kernel"``, ``"recurrent_kernel"`` and ``"bias"`` (None
without).

What the forward keeps (``kept_buffers``, per sample and step, beside the outputs): the LSTM its
4H gate pre-activations and its cell state (5H values), the GRU with reset_after the input and
recurrent parts of its pre-activations (6H), without reset_after its 3H pre-activations (the
candidate's is ``x_h + (r * h) @ U_h``), the SimpleRNN nothing (its derivative comes from its
output).

How it runs (everything in processing order, ``(T, B, ...)``):

1. The states before each step come from the outputs: a cell's output is its new h, and a masked
   step holds h, so h before step i is the output of the sample's last valid step before i
   (``initial h`` before its first).
2. The reverse loop (``_make_reverse_loop``, compiled once per cell kind): per step, each
   sample's derivative along its row (the cells' scalar ``backward`` functions in
   ``kernels/cells``, the gates activated from the kept pre-activations on the way) gives the
   pre-activations' cotangents dz (added, while in cache, into the sample's bias gradient),
   then the GEMM ``dz @ recurrent_kernel.T`` (``_gemm``'s micro-kernel over the transposed
   kernel, packed once) gives the previous h's cotangent (the GRU: z's and r's part, then the
   candidate's recurrent part, which has its own dz, in one sum; without reset_after two
   products, around the reset gate). At a masked step the state
   cotangents pass through unchanged and the output cotangent moves to the previous step's
   output (unless ``zero_output_for_mask``). The threads split it as the forward's time loop
   (``_common.run_chunks``): a large batch by rows, each thread running the whole loop on its
   rows; a small one by units, the threads meeting once per step between the pointwise part and
   the GEMM (each thread's GEMM needs every unit of dz; the next step's pointwise part reads
   only the thread's own units of the h cotangent).
3. The weights' and inputs' gradients are GEMMs over all steps (the kernels' own micro-kernels,
   ``_gemm_sums`` and ``_gemm``): ``[x | h].T @ dz`` (one product where x and h meet the same
   dz: the LSTM, the SimpleRNN, the GRU without reset_after), ``dz @ kernel.T``. When the reverse
   loop runs on one thread (a batch too small to split), the weight gradients are summed block of
   steps by block of steps behind it, on a second thread while the loop goes on
   (``_BlockSums``); when every thread is busy in the loop, over all steps after it, in one pool
   of tasks with ``dz @ kernel.T`` (together 3.3-3.7% faster than apart and in turn, LSTM at
   B = 8-256, 2 threads).
"""

import queue
import threading
from concurrent.futures import wait

import numpy as np

from ..cells import GRU, GRU_BEFORE, LAYOUTS, LSTM, SIMPLE_RNN, register
from ..cells import gru as gru_cell
from ..cells import lstm as lstm_cell
from ..cells import simple_rnn as rnn_cell
from ..cells.activations import code
from . import _common as C
from . import _scratch
from .activations import act_inplace, act_into
from ._gemm import I0, ad, fused_rows, gate_columns, pack_transposed, panel_vectors, panel_width
from ._gemm_sums import block_columns, summed_products, summed_runs
from ._numba_cache import cached_njit
from ._rows import add_row, copy_row, zero_row
from ._sync import meet

register()

# Pre-activation columns kept per sample and step, in units of H (see the module docstring).
KEPT_GATES = {LSTM: 4, GRU: 6, GRU_BEFORE: 3, SIMPLE_RNN: 0}


def kept_values_per_step(kind):
    """Values per sample, step and unit that the forward keeps for the backward (beyond the
    outputs): pre-activations, plus the LSTM's cell state."""
    return KEPT_GATES[kind] + (1 if kind == LSTM else 0)


def kept_buffers(kind, T, B, H, dtype):
    """``(kz, kc)``: the arrays ``run_cell(..., kept=...)`` fills for ``cell_backward``
    (``(T, B, K)`` pre-activations and the LSTM's ``(T, B, H)`` cell states; placeholders where
    a kind keeps nothing)."""
    dt = np.dtype(dtype)
    none = np.zeros((1, 1, 1), dt)
    K = KEPT_GATES[kind] * H
    kz = _scratch.empty((T, B, K), dt) if K else none
    kc = _scratch.empty((T, B, H), dt) if kind == LSTM else none
    return kz, kc


@cached_njit(error_model="numpy", inline="always")
def _row(a, tm, t, n):
    """Row (t, n) of a (T, B, ...) array when ``tm``, else of a (B, T, ...) one."""
    return a[t, n] if tm else a[n, t]


@cached_njit(**C.KERNEL_OPTIONS, **C.NO_REFCOUNT, nogil=True)
def _states_before(outputs, tm, back, valid, has_mask, h0, h_prev):
    """h_prev: each sample's h before each step, in x's layout ((T, B, H) when ``tm``, else
    (B, T, H)) by input time; ``outputs`` in that layout in processing order."""
    T = h_prev.shape[0] if tm else h_prev.shape[1]
    B = h_prev.shape[1] if tm else h_prev.shape[0]
    for n in range(B):
        src = h0[n]
        for i in range(T):
            t = T - 1 - i if back else i
            copy_row(_row(h_prev, tm, t, n), src)
            if not has_mask or valid[i, n]:
                src = outputs[i, n] if tm else outputs[n, i]


@cached_njit(error_model="numpy", inline="always")
def _h_cotangent(gy, carry, gh, dh, u0, u1):
    """dh[j] = the row's output, carried and recurrent h cotangents, units [u0, u1) of the
    row arrays; the carried one is used up."""
    y = gy[u0:u1]   # slices indexed from 0: the loops vectorise (kernels/cpu/_rows.py)
    cr = carry[u0:u1]
    r = gh[u0:u1]
    d = dh[u0:u1]
    for j in range(u1 - u0):
        d[j] = y[j] + cr[j] + r[j]
    zero_row(cr)


@cached_njit(error_model="numpy", inline="always")
def _lstm_row_backward(a, gy, carry, gh, gc, direct, c_old, dz, H, u0, u1, act, ract):
    """Units [u0, u1) of one LSTM row backwards: ``a`` holds the activated gates i, f, g, o,
    act(c') and (written here) the h cotangent; gy, carry, gh: the row's output, carried and
    recurrent h cotangents; gc: its c cotangent (updated); c_old: its cell state before the
    step; dz: its pre-activations' cotangents (written). One loop per result, each reading the
    cell's ``backward`` for one of its values (LLVM drops the others): a loop that wrote all
    five would need more runtime alias checks than LLVM makes, and would not vectorise."""
    ai = a[u0:u1]
    af = a[H + u0:H + u1]
    ag = a[2 * H + u0:2 * H + u1]
    ao = a[3 * H + u0:3 * H + u1]
    ac = a[4 * H + u0:4 * H + u1]
    _h_cotangent(gy, carry, gh, a[5 * H:6 * H], u0, u1)
    dh = a[5 * H + u0:5 * H + u1]
    gcr = gc[u0:u1]
    co = c_old[u0:u1]
    n = u1 - u0
    zero_row(direct[u0:u1])
    for g in range(4):
        d = dz[g * H + u0:g * H + u1]
        for j in range(n):
            d[j] = lstm_cell.backward(ai[j], af[j], ag[j], ao[j], co[j], ac[j], dh[j], gcr[j],
                                      act, ract)[g]
    for j in range(n):   # last: the loops above read the old c cotangent
        gcr[j] = lstm_cell.backward(ai[j], af[j], ag[j], ao[j], co[j], ac[j], dh[j], gcr[j],
                                    act, ract)[4]


@cached_njit(error_model="numpy", inline="always")
def _gru_row_backward(a, gy, carry, gh, hp, zrow, dz, dz_rec, direct, H, u0, u1, act, ract):
    """Units [u0, u1) of one GRU (reset_after) row backwards: ``a`` holds the activated z, r and
    candidate and (written here) the h cotangent; gy, carry, gh: the row's output, carried and
    recurrent h cotangents; hp: its h before the step; zrow: its kept pre-activations (the
    recurrent candidate part at 5H); dz: the pre-activations' cotangents (written; z's and r's
    are also their recurrent parts'); dz_rec: the recurrent candidate part's (H, written);
    direct: the h cotangent that bypasses U (written). One loop per result, as
    _lstm_row_backward."""
    az = a[u0:u1]
    ar = a[H + u0:H + u1]
    ah = a[2 * H + u0:2 * H + u1]
    _h_cotangent(gy, carry, gh, a[3 * H:4 * H], u0, u1)
    dh = a[3 * H + u0:3 * H + u1]
    hpr = hp[u0:u1]
    rec_h = zrow[5 * H + u0:5 * H + u1]
    dzz = dz[u0:u1]
    dzr = dz[H + u0:H + u1]
    dpre = dz[2 * H + u0:2 * H + u1]
    dd = direct[u0:u1]
    n = u1 - u0
    for j in range(n):
        dzz[j] = gru_cell.blend_backward(az[j], hpr[j], ah[j], dh[j], act, ract)[0]
    for j in range(n):
        dpre[j] = gru_cell.blend_backward(az[j], hpr[j], ah[j], dh[j], act, ract)[1]
    for j in range(n):
        dd[j] = gru_cell.blend_backward(az[j], hpr[j], ah[j], dh[j], act, ract)[2]
    for j in range(n):
        dzr[j] = gru_cell.candidate_backward(dpre[j], ar[j], rec_h[j], ract)[0]
    drec = dz_rec[u0:u1]
    for j in range(n):
        drec[j] = gru_cell.candidate_backward(dpre[j], ar[j], rec_h[j], ract)[1]


@cached_njit(error_model="numpy", inline="always")
def _add_gates(db, dzn, gates, H, u0, u1):
    """db += units [u0, u1) of each of a row's ``gates`` gates of dz: the bias gradient, summed
    per sample along the loop while the row is in cache (a pass over all of dz after the loop
    took ~4% of an LSTM pullback)."""
    for g in range(gates):
        add_row(db[g * H + u0:g * H + u1], dzn[g * H + u0:g * H + u1])


@cached_njit(error_model="numpy", inline="always")
def _masked_row_backward(gy, carry, gh, direct, u0, u1, zero_out):
    """Units [u0, u1) of a row at a masked step: its state's cotangent passes through (direct),
    its output's is carried to the previous step unless masked outputs are zeros (then what
    the carry holds, the last output's cotangent at the last step, belongs to a zero too)."""
    copy_row(direct[u0:u1], gh[u0:u1])
    if zero_out:
        zero_row(carry[u0:u1])
        return
    y = gy[u0:u1]
    cr = carry[u0:u1]
    for j in range(u1 - u0):
        cr[j] += y[j]


@cached_njit(error_model="numpy", inline="always")
def _gru_activated_gates(a, zrow, H, u0, u1, act, ract):
    """Units [u0, u1) of a GRU (reset_after) row's activated z, r and candidate into ``a``, from
    its kept pre-activations (input part, then recurrent part)."""
    az = a[u0:u1]
    ar = a[H + u0:H + u1]
    ah = a[2 * H + u0:2 * H + u1]
    xz = zrow[u0:u1]
    xr = zrow[H + u0:H + u1]
    xh = zrow[2 * H + u0:2 * H + u1]
    hz = zrow[3 * H + u0:3 * H + u1]
    hr = zrow[4 * H + u0:4 * H + u1]
    hh = zrow[5 * H + u0:5 * H + u1]
    for j in range(u1 - u0):
        az[j] = xz[j] + hz[j]
    for j in range(u1 - u0):
        ar[j] = xr[j] + hr[j]
    act_inplace(ract, az)
    act_inplace(ract, ar)
    for j in range(u1 - u0):
        ah[j] = gru_cell.candidate_input(xh[j], ar[j], hh[j])
    act_inplace(act, ah)


@cached_njit(error_model="numpy", inline="always")
def _gru_before_row_backward(a, hp, dh, rh, dz, direct, H, act, ract):
    """A GRU (reset_after=False) row backwards, every unit (this cell does not split units):
    rh = r * h (the input of U_h's gradient), the z and candidate cotangents, and the h
    cotangent that bypasses U."""
    for j in range(H):
        rh[j] = gru_cell.reset(a[H + j], hp[j])
        dzz, dpre, dd = gru_cell.blend_backward(a[j], hp[j], a[2 * H + j], dh[j], act, ract)
        dz[j] = dzz
        dz[2 * H + j] = dpre
        direct[j] = dd


@cached_njit(error_model="numpy", inline="always")
def _simple_rnn_row_backward(y, dh, dz, direct, u0, u1, act):
    """Units [u0, u1) of a SimpleRNN row backwards, from its output y (= h')."""
    yr = y[u0:u1]
    d = dh[u0:u1]
    dzr = dz[u0:u1]
    for j in range(u1 - u0):
        dzr[j] = rnn_cell.backward(yr[j], d[j], act)
    zero_row(direct[u0:u1])


def _make_reverse_loop(kind):
    """The reverse loop of cell kind ``kind`` over rows [n0, n1), units [u0, u1) and reverse
    steps [s_begin, s_end) (processing step i = T - 1 - s); see the module docstring, step 2.
    dz, dz_rec, rh and h_prev are in x's layout, by input time t."""

    def reverse_loop(kept, ys, h_prev, c0, valid, flags, cotangents, work, weights,
                     activations, sync, threads, n0, n1, u0, u1, s_begin, s_end):
        kz, kc = kept
        has_mask, zero_out, tm, back, all_outputs = flags
        gy, gh, gc = cotangents      # gy: the outputs' layout, processing order (all_outputs:
        # else none, the last one's in the carry); gh (B, Hp), gc (B, H)
        dz, dz_rec, carry, direct, d_rh, rh, zeros, acts, db, db_rec = work
        PUt, PUt2, nv = weights      # U.T packed (GRU without reset_after: U_zr.T, U_h.T)
        act, ract = activations
        T = h_prev.shape[0] if tm else h_prev.shape[1]
        H = h_prev.shape[2]
        G = dz.shape[2]
        Hp = gh.shape[1]
        es = dz.itemsize
        lda = G if tm else T * G     # from dz's row (t, n) to (t, n + 1)
        for s in range(s_begin, s_end):
            i = T - 1 - s
            t = T - 1 - i if back else i
            for n in range(n0, n1):
                dzn = _row(dz, tm, t, n)
                gyr = _row(gy, tm, i, n) if all_outputs else zeros
                if has_mask and not valid[i, n]:
                    _masked_row_backward(gyr, carry[n], gh[n], direct[n], u0, u1, zero_out)
                    for g in range(G // H):
                        zero_row(dzn[g * H + u0:g * H + u1])
                    if kind == GRU:
                        zero_row(_row(dz_rec, tm, t, n)[u0:u1])
                    if kind == GRU_BEFORE:
                        zero_row(_row(rh, tm, t, n)[u0:u1])
                    continue
                zrow = kz[i, n]
                hp = _row(h_prev, tm, t, n)
                a = acts[n]   # the activated gates first, one vectorised pass each
                if kind == LSTM:
                    for g in range(4):
                        act_into(act if g == 2 else ract, a[g * H + u0:g * H + u1],
                                 zrow[g * H + u0:g * H + u1])
                    act_into(act, a[4 * H + u0:4 * H + u1], kc[i, n, u0:u1])   # act(c')
                elif kind == GRU:
                    _gru_activated_gates(a, zrow, H, u0, u1, act, ract)
                elif kind == GRU_BEFORE:
                    for g in range(3):
                        act_into(act if g == 2 else ract, a[g * H:(g + 1) * H],
                                 zrow[g * H:(g + 1) * H])
                if kind == LSTM:
                    _lstm_row_backward(a, gyr, carry[n], gh[n], gc[n], direct[n],
                                       kc[i - 1, n] if i > 0 else c0[n], dzn, H, u0, u1, act,
                                       ract)
                    _add_gates(db[n], dzn, 4, H, u0, u1)
                    continue
                if kind == GRU:
                    dzr = _row(dz_rec, tm, t, n)
                    _gru_row_backward(a, gyr, carry[n], gh[n], hp, zrow, dzn, dzr, direct[n], H,
                                      u0, u1, act, ract)
                    _add_gates(db[n], dzn, 3, H, u0, u1)
                    _add_gates(db_rec[n], dzn, 2, H, u0, u1)   # z's and r's: the same dz
                    add_row(db_rec[n, 2 * H + u0:2 * H + u1], dzr[u0:u1])
                    continue
                dh = acts[n, 5 * H:6 * H]   # the row's h cotangent
                _h_cotangent(gyr, carry[n], gh[n], dh, u0, u1)
                if kind == GRU_BEFORE:   # its bias gradient once r's dz is known (below)
                    _gru_before_row_backward(a, hp, dh, _row(rh, tm, t, n), dzn, direct[n], H,
                                             act, ract)
                else:
                    _simple_rnn_row_backward(_row(ys, tm, i, n), dh, dzn, direct[n], u0, u1, act)
                    _add_gates(db[n], dzn, 1, H, u0, u1)
            if not meet(sync, threads, s + 1):   # every unit of dz[i] is known
                return
            row = ad(dz) + ((t * dz.shape[1] * G) if tm else (t * G)) * es   # dz row (t, 0)
            if kind == GRU_BEFORE:   # d(r * h) = dz_h @ U_h.T; then r's dz; then the z, r GEMM
                fused_rows(dz, ad(d_rh), Hp, ad(zeros), I0, row + 2 * H * es, lda, ad(PUt2), H,
                           PUt2.shape[0], nv, n0, n1)
                for n in range(n0, n1):
                    if has_mask and not valid[i, n]:
                        continue
                    dzn = _row(dz, tm, t, n)
                    hp = _row(h_prev, tm, t, n)
                    for j in range(H):
                        dzr, dh_part = gru_cell.reset_backward(d_rh[n, j], acts[n, H + j], hp[j],
                                                               ract)
                        dzn[H + j] = dzr
                        direct[n, j] += dh_part
                    add_row(db[n], dzn)
                fused_rows(dz, ad(gh), Hp, ad(direct), Hp, row, lda, ad(PUt), 2 * H,
                           PUt.shape[0], nv, n0, n1)
            elif kind == GRU:   # gh = direct + dz[i][:, :2H] @ U_zr.T + dz_rec[i] @ U_h.T: one
                # sum per element, in k order, the first part's stored and read back (exact)
                gate_columns(dz, ad(gh), Hp, ad(direct), Hp, row, lda, PUt, 2 * H, nv, n0, n1,
                             1, H, u0, u1)
                rec = ad(dz_rec) + ((t * dz_rec.shape[1] * H) if tm else (t * H)) * es
                gate_columns(dz, ad(gh), Hp, ad(gh), Hp, rec, H if tm else T * H, PUt2, H, nv,
                             n0, n1, 1, H, u0, u1)
            else:   # gh = direct + dz[i] @ U.T
                gate_columns(dz, ad(gh), Hp, ad(direct), Hp, row, lda, PUt, G, nv, n0, n1, 1, H,
                             u0, u1)

    return reverse_loop


_compiled: dict = {}
_lock = threading.Lock()


def _reverse_loop(kind):
    with _lock:
        loop = _compiled.get(kind)
        if loop is None:
            loop = _compiled[kind] = cached_njit(**C.KERNEL_OPTIONS, **C.NO_REFCOUNT, nogil=True)(
                _make_reverse_loop(kind))
        return loop


def _processing_order(a, time_major, go_backwards):
    """A (B, T, ...) or (T, B, ...) array as (T, B, ...) in processing order (a view)."""
    a = a if time_major else np.swapaxes(a, 0, 1)
    return a[::-1] if go_backwards else a


def _packed_transpose(u, nv, dt):
    """u.T (u: (H, N)) in the GEMM's panels: the h cotangent is dz @ u.T."""
    return pack_transposed(np.asarray(u, dt), panel_width(dt, nv))


def _chunks(kind, B, H, G, T, dt):
    """(chunks (n0, n1, u0, u1), sync or None, the GEMM's panel vectors): rows split over
    threads when the batch is large enough, else units (not GRU without reset_after), as the
    forward splits them (kernels/cpu/cells._chunks)."""
    row_flops = 2.0 * G * H
    u_bytes = H * G * np.dtype(dt).itemsize
    rows = C.row_chunks(B, row_flops * B * T, u_bytes)
    if len(rows) == 1:   # 8-15 rows: one chunk per thread (0.82-0.90x the one-thread loop with
        # the sums beside it, LSTM and GRU (8-12, 200-500, 16-32, 32-256), EPYC, 2026-12-04)
        rows = C.small_batch_rows(B, row_flops * B * T, u_bytes, tiny_rows=False)
    nv = panel_vectors(max(n1 - n0 for n0, n1 in rows))
    # Units only for a recurrent kernel that one core's L2 cannot hold: on the development
    # machine the reverse loop's unit split was never faster below that, and up to 2x slower
    # (LSTM (8, 200, 32, 256): 52.6 against 25.9 ms on one thread); at B=1, H=512 the same.
    if len(rows) == 1 and kind != GRU_BEFORE and u_bytes >= C.L2_BYTES:
        panel_columns = max(panel_width(dt, nv), panel_width(dt, 2))
        units = C.unit_chunks(B, H, row_flops * B, panel_columns, u_bytes)
        if units is not None:
            return [(0, B, u0, u1) for u0, u1 in units], C.new_sync(), nv
    return [(n0, n1, 0, H) for n0, n1 in rows], None, nv


# Step 3's GEMMs run on the kernels' own micro-kernels (_gemm, _gemm_sums) and threads: NumPy's BLAS would
# run them on its own threads, which on a busy machine made them tens of times slower (measured:
# a 1000x256 @ 256x32 product 0.3 ms on one thread, 12-16 ms on two under load).
@cached_njit(**C.KERNEL_OPTIONS, **C.NO_REFCOUNT, nogil=True)
def _gemm_task(z, a, P, init, nv, n0, n1, p0, p1):
    """Rows [n0, n1) and panels [p0, p1) of z = a @ P (P packed, z padded to whole panels)."""
    es = z.itemsize
    NR = P.shape[2]
    K = P.shape[1]
    fused_rows(z, ad(z) + p0 * NR * es, z.shape[1], ad(init), I0, ad(a), a.shape[1],
               ad(P) + p0 * K * NR * es, K, p1 - p0, nv, n0, n1)


def _run_tasks(function, tasks):
    """``function(*task)`` for each task (compiled, without the GIL), on the calling thread and
    the kernels' pool; ``function`` None: each task is ``(function, args)``."""
    if function is not None:
        tasks = [(function, task) for task in tasks]
    if len(tasks) == 1 or C.max_threads() <= 1:
        for fn, task in tasks:
            fn(*task)
        return
    todo = list(reversed(tasks))
    lock = threading.Lock()

    def work():
        while True:
            with lock:
                if not todo:
                    return
                fn, task = todo.pop()
            fn(*task)

    workers = min(C.max_threads(), len(tasks)) - 1
    pool = C._get_pool(workers)
    futures = [pool.submit(work) for _ in range(workers)]
    try:
        work()
    finally:
        for f in futures:
            f.result()


def _split(count, parts, align=1):
    """[(a, b), ...]: range(count) in up to ``parts`` pieces on multiples of ``align``."""
    parts = max(1, min(parts, count // align or 1))
    bounds = sorted({min(count, (i * count // parts) // align * align) for i in range(parts)}
                    | {count})
    return list(zip(bounds[:-1], bounds[1:]))


_TASKS_PER_THREAD = 4


def _operand(parts):
    """``(a, sk, a2, sk2, m_split)`` for summed_products/summed_runs from a product's one or two
    A parts (arrays in x's layout, ``(..., M_i)``): flat views and their row strides."""
    a = parts[0]
    a2 = parts[-1]
    return a.reshape(-1), a.shape[-1], a2.reshape(-1), a2.shape[-1], a.shape[-1]


def _rows_of(parts):
    """Columns of Z: the M of each part, side by side."""
    return sum(part.shape[-1] for part in parts)


def _product_tasks(products, dt):
    """(tasks, outs): ``[A.T @ u2[:, :n] for (parts, u, su, n) in products]`` with A = the parts
    side by side as (rows, M) and u2 = the flat u as rows ``su`` apart (``_gemm_sums``): weight
    gradients, their columns shared out over the threads (summed_products tasks)."""
    tasks, outs = [], []
    NR = block_columns(dt)
    parts_per = max(1, C.max_threads() * _TASKS_PER_THREAD // len(products))
    for parts, u, su, n in products:
        a, sk, a2, sk2, m_split = _operand(parts)
        K = a.shape[0] // sk
        z = np.empty((_rows_of(parts), n), dt)
        blocks = (n + NR - 1) // NR
        for b0, b1 in _split(blocks, parts_per):
            tasks.append((summed_products, (z, a, sk, a2, sk2, m_split, u, su, K, b0 * NR,
                                            min(n, b1 * NR))))
        outs.append(z)
    return tasks, outs


def _transpose_tasks(a, P, D, dt, threads=None):
    """(tasks, z): a @ w.T (a: (rows, G), w: (D, G), P: w.T in panels of
    _TRANSPOSE_PANEL_VECTORS vectors, see _packed_transposes) as _gemm_task tasks, its rows
    shared out over ``threads`` threads (default: all of the kernels'); the result is
    ``z[:, :D]``."""
    nv = _TRANSPOSE_PANEL_VECTORS
    z = np.empty((a.shape[0], P.shape[0] * P.shape[2]), dt)
    init = np.zeros(z.shape[1], dt)
    threads = C.max_threads() if threads is None else threads
    tasks = [(_gemm_task, (z, a, P, init, nv, r0, r1, 0, P.shape[0]))
             for r0, r1 in _split(a.shape[0], threads * _TASKS_PER_THREAD, 6)]
    return tasks, z


def _times_transpose(a, P, D, dt, threads=None):
    """a @ w.T (see _transpose_tasks) on ``threads`` threads; returns (rows, D)."""
    tasks, z = _transpose_tasks(a, P, D, dt, threads)
    if (C.max_threads() if threads is None else threads) > 1:
        _run_tasks(None, tasks)
    else:
        for fn, task in tasks:
            fn(*task)
    return z[:, :D]


def _products_and_transpose(products, a, P, D, dt):
    """``_product_tasks``' products and ``_times_transpose(a, P, D, dt)`` in one pool of tasks
    (each thread moves on to the other GEMMs' tasks as it finishes, no meeting between them);
    returns (outs, (rows, D))."""
    tasks, outs = _product_tasks(products, dt)
    transpose, z = _transpose_tasks(a, P, D, dt)
    _run_tasks(None, tasks + transpose)
    return outs, z[:, :D]


_TRANSPOSE_PANEL_VECTORS = 2   # the input kernel's transpose: d_x = dz @ kernel.T


def _packed_transposes(kind, kernel, recurrent_kernel, nv, dt, cache):
    """(PUt, PUt2, PWt): the recurrent kernel's transpose in the reverse loop's panels (GRU: its
    z, r part and its candidate's part apart; else a placeholder second) and the input kernel's
    for d_x. A frozen cell's (``cache``: its weight cache) are
    packed once: at LSTM (8, 200, 32, 256) packing took 0.4 of a 7 ms pullback."""
    key = ("backward", kind, np.dtype(dt).str, nv)
    packed = None if cache is None else cache.get(key)
    if packed is not None:
        return packed
    U = np.asarray(recurrent_kernel, dt)
    H = U.shape[0]
    if kind in (GRU, GRU_BEFORE):
        PUt, PUt2 = _packed_transpose(U[:, :2 * H], nv, dt), _packed_transpose(U[:, 2 * H:], nv, dt)
    else:
        PUt, PUt2 = _packed_transpose(U, nv, dt), np.zeros((1, 1, 1), dt)
    packed = (PUt, PUt2, _packed_transpose(np.asarray(kernel, dt), _TRANSPOSE_PANEL_VECTORS, dt))
    if cache is not None:
        cache[key] = packed
    return packed


# Blocks of steps over which _BlockSums adds up the weight gradients (fixed by T alone, so the
# results do not depend on the threads).
_SUM_BLOCKS = 8


class _BlockSums:
    """The weight gradients (``_products``' products) of a reverse loop that runs on one thread,
    summed block of steps by block of steps as the loop finishes them: with a second thread, on
    that thread while the loop goes on (a small batch's loop has no other work for it), else
    after each block. Every element adds its blocks in the loop's order, each block's rows in
    layout order, on any number of threads: the same bits."""

    def __init__(self, products, dt, T, B, tm, back):
        self.products, self.T, self.B, self.tm, self.back = products, T, B, tm, back
        self.outs = [np.zeros((_rows_of(parts), n), dt) for parts, _, _, n in products]
        size = -(-T // _SUM_BLOCKS)
        self.blocks = [(s0, min(T, s0 + size)) for s0 in range(0, T, size)]
        flops = sum(2.0 * part.size * n for parts, _, _, n in products for part in parts)
        self.threaded = C.max_threads() > 1 and flops >= C._MIN_FLOPS_TO_SPLIT

    def run(self, loop, args, chunks, row_seconds, times_transpose):
        """The reverse loop (``C.run_chunks(loop, args, chunks, ...)``, block by block) and the
        sums; returns ``times_transpose(threads)``, run on the calling thread after the loop
        (with every thread once the sums are done)."""
        if not self.threaded:
            for s0, s1 in self.blocks:
                C.run_chunks(loop, args, chunks, s1, row_seconds, 1, None, first=s0)
                self._add(s0, s1)
            return times_transpose(None)
        ready = queue.SimpleQueue()
        workers = C._reserve_workers(1)
        try:
            done = workers[0].submit(lambda: self._add_as_ready(ready))
            try:
                for s0, s1 in self.blocks:
                    C.run_chunks(loop, args, chunks, s1, row_seconds, 1, None, first=s0)
                    ready.put((s0, s1))
                d_x = times_transpose(None if done.done() else 1)
            except BaseException:   # e.g. Ctrl-C: the sums stop after their current block
                ready.put(None)
                wait([done])
                raise
            done.result()
        finally:
            C._release_workers(workers)
        return d_x

    def _add_as_ready(self, ready):
        for _ in self.blocks:
            block = ready.get()
            if block is None:
                return
            self._add(*block)

    def _add(self, s0, s1):
        """Add reverse steps [s0, s1)' rows: input steps [T - s1, T - s0), or [s0, s1) when
        the loop went backwards."""
        T, B = self.T, self.B
        t0, t1 = (s0, s1) if self.back else (T - s1, T - s0)
        for (parts, u, su, n), z in zip(self.products, self.outs):
            a, sk, a2, sk2, m_split = _operand(parts)
            if self.tm:   # the block's rows are contiguous: (t1 - t0) * B rows
                row, runs, K, steps = t0 * B, 1, (t1 - t0) * B, 0
            else:         # one run of t1 - t0 rows per sample, T rows apart
                row, runs, K, steps = t0, B, t1 - t0, T
            summed_runs(z, a[row * sk:], sk, steps * sk, a2[row * sk2:], sk2, steps * sk2,
                        m_split, u[row * su:], su, runs, steps * su, K, 0, n)


def cell_backward(kind, x, kernel, recurrent_kernel, bias, states, step_mask, options,
                  activation, recurrent_activation, outputs, d_outputs, d_states, kept=None,
                  weight_cache=None, d_last=None):
    """The gradients of a ``run_cell`` call (see the module docstring); ``weight_cache``: as
    ``run_cell``'s (a frozen cell's: the transposed weights are packed once); ``d_last``: the
    last processed step's output cotangent ``(B, H)`` beside ``d_outputs`` (None: zeros)."""
    from .cells import run_cell

    layout = LAYOUTS[kind]
    dt = C.check_dtypes(x, kernel, recurrent_kernel, bias, *states, outputs, d_outputs,
                        *d_states)
    act, ract = code(activation), code(recurrent_activation)
    tm, back = bool(options.time_major), bool(options.go_backwards)
    H = recurrent_kernel.shape[0]
    G = layout.gates * H
    xs = _processing_order(x, tm, back)   # (T, B, D), a view
    T, B, D = xs.shape
    if kept is None:   # recomputation: run the forward again, keeping what the backward needs
        kept = kept_buffers(kind, T, B, H, dt)
        if kind != SIMPLE_RNN:
            run_cell(kind, x, kernel, recurrent_kernel, bias, states, step_mask,
                     options._replace(return_all_outputs=True), activation,
                     recurrent_activation, kept=kept)
    has_mask = step_mask is not None
    valid = (np.ascontiguousarray(step_mask[::-1] if back else step_mask, dtype=np.bool_)
             if has_mask else np.ones((1, 1), np.bool_))
    ys = np.ascontiguousarray(outputs)

    def in_x_layout(width):   # (T, B, width) or (B, T, width), by input time
        return _scratch.empty((T, B, width) if tm else (B, T, width), dt)

    h_prev = in_x_layout(H)
    _states_before(ys, tm, back, valid, has_mask, np.ascontiguousarray(states[0], dtype=dt),
                   h_prev)
    chunks, sync, nv = _chunks(kind, B, H, G, T, dt)
    placeholder = np.zeros((1, 1, 1), dt)
    PUt, PUt2, PWt = _packed_transposes(kind, kernel, recurrent_kernel, nv, dt, weight_cache)
    Hp = PUt.shape[0] * PUt.shape[2]   # the GEMM writes whole panels: rows padded to Hp
    gh = np.zeros((B, Hp), dt)
    gh[:, :H] = d_states[0]
    gc = (np.array(d_states[1], dtype=dt, order="C", copy=True) if kind == LSTM
          else np.zeros((1, 1), dt))
    c0 = (np.ascontiguousarray(states[1], dtype=dt) if kind == LSTM else np.zeros((1, 1), dt))
    dz = in_x_layout(G)
    # The GRU's recurrent part of dz differs from dz only in the candidate's units: those alone
    # (writing z's and r's twice cost 3-6% of a GRU pullback at B = 8-256)
    dz_rec = in_x_layout(H) if kind == GRU else placeholder
    rh = in_x_layout(H) if kind == GRU_BEFORE else placeholder
    db = np.zeros((B, G), dt)   # the bias gradient per sample (GRU: also its recurrent part)
    db_rec = np.zeros((B, G), dt) if kind == GRU else np.zeros((1, 1), dt)
    carry = np.zeros((B, H), dt)   # output cotangents carried over masked steps (see below)
    work = (dz, dz_rec, carry, np.zeros((B, Hp), dt), np.zeros((B, Hp), dt), rh,
            np.zeros(Hp, dt), np.empty((B, 6 * H), dt), db, db_rec)   # acts: a row's
    # activated gates (and, for the LSTM, its h cotangent)
    # The output cotangents read in place (a copy into processing order cost ~0.2 ms of an
    # LSTM (32, 100, 64, 128) pullback); the last step's extra one starts the carried cotangent.
    all_outputs = d_outputs is not None
    gy = np.ascontiguousarray(d_outputs, dtype=dt) if all_outputs else placeholder
    if d_last is not None:
        carry[...] = d_last
    flags = (has_mask, bool(options.zero_output_for_mask), tm, back, all_outputs)
    threads = len(chunks) if sync is not None else 1
    args = (kept, ys, h_prev, c0, valid, flags, (gy, gh, gc), work, (PUt, PUt2, nv),
            (act, ract), C.new_sync() if sync is None else sync, threads)
    loop, row_seconds = _reverse_loop(kind), C.row_step_seconds(2.0 * G * H * 2, dt)

    # Step 3: the weights' and inputs' gradients over all steps; every array is in x's layout,
    # so that row k of each is the same (sample, step).
    xc = np.ascontiguousarray(x, dtype=dt)
    flat_dz = dz.reshape(-1)
    # x and h side by side where they meet the same dz (one product: dz read once). The GRU's
    # candidate columns differ: with reset_after U_h's gradient takes the recurrent part's own
    # dz, without it r * h.
    if kind == GRU_BEFORE:
        products = [((xc, h_prev), flat_dz, G, 2 * H), ((xc, rh), flat_dz[2 * H:], G, H)]
    elif kind == GRU:   # its recurrent candidate part has its own dz
        products = [((xc, h_prev), flat_dz, G, 2 * H), ((xc,), flat_dz[2 * H:], G, H),
                    ((h_prev,), dz_rec.reshape(-1), H, H)]
    else:
        products = [((xc, h_prev), flat_dz, G, G)]
    if len(chunks) == 1:   # one thread's loop: the sums follow it, block by block
        sums = _BlockSums(products, dt, T, B, tm, back)
        d_x = sums.run(loop, args, chunks, row_seconds,
                       lambda threads: _times_transpose(dz.reshape(T * B, G), PWt, D, dt,
                                                        threads))
        product_grads = sums.outs
    else:   # every thread busy in the loop: the sums over all steps at once, after it
        C.run_chunks(loop, args, chunks, T, row_seconds, 1, sync)
        product_grads, d_x = _products_and_transpose(products, dz.reshape(T * B, G), PWt, D, dt)
    Dx = xc.shape[-1]
    if kind == GRU_BEFORE:   # [x | h] against z, r's dz; [x | r * h] against the candidate's
        zr, cand = product_grads
        d_w = np.concatenate([zr[:Dx], cand[:Dx]], axis=1)
        d_u = np.concatenate([zr[Dx:], cand[Dx:]], axis=1)
    elif kind == GRU:   # [x | h] against z, r's dz; x against the candidate's, h its own
        zr, cand_x, cand_h = product_grads
        d_w = np.concatenate([zr[:Dx], cand_x], axis=1)
        d_u = np.concatenate([zr[Dx:], cand_h], axis=1)
    else:
        d_w, d_u = product_grads[0][:Dx], product_grads[0][Dx:]
    d_x = d_x.reshape(x.shape) if d_x.flags.c_contiguous else np.ascontiguousarray(
        d_x).reshape(x.shape)
    d_bias = None
    if bias is not None:   # the samples' sums (each along its steps), sample after sample
        d_bias = db.sum(axis=0)
        if kind == GRU:
            d_bias = np.stack([d_bias, db_rec.sum(axis=0)])
    d_h = np.ascontiguousarray(gh[:, :H])
    d_states_out = [d_h, gc] if kind == LSTM else [d_h]
    return {"inputs": d_x, "states": d_states_out, "kernel": d_w,
            "recurrent_kernel": d_u, "bias": d_bias}
