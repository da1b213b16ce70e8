"""Python-side plumbing shared by the LSTM/GRU/SimpleRNN CPU kernels.

- dtype checks (cheap asserts: the caller validated shapes),
- weight packing and the buffer of input projections (computed a block of steps ahead),
- output/state buffers,
- splitting the batch over threads: each thread runs the whole jitted time loop on its own rows
  (the kernels release the GIL), so threads never synchronise per step.
"""

import hashlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))

# Below this many flops for the whole recurrence a second thread costs more than it saves.
_MIN_FLOPS_TO_SPLIT = 4.0e6
_ROW_ALIGN = 2   # chunk boundaries on even rows (the GEMM's row tiles are 6/4/2/1)
_MIN_ROWS = 8    # rows per chunk, at least
_CHUNKS_PER_THREAD = 4
_XP_BLOCK_BYTES = 128 * 1024  # input projection computed this many bytes (per chunk) ahead

_pool = None
_pool_size = 0
_pool_pid = None
_pool_lock = threading.Lock()
_cache_checked = False
_MODULES = ("activations", "_gemm", "lstm", "gru", "simple_rnn")
_STAMP = "gpukb-kernels-cpu.sources"


def ensure_fresh_cache():
    """Drop this package's Numba disk cache when any of its sources changed.

    Numba keys a cached function on its own file only; the kernels inline the activations and
    the GEMM from other files, so an edit there would otherwise keep serving stale machine code.
    Runs once per process, on the first kernel call (never at import).
    """
    global _cache_checked
    if _cache_checked:
        return
    with _pool_lock:
        if _cache_checked:
            return
        _cache_checked = True
        here = os.path.dirname(os.path.abspath(__file__))
        try:
            digest = hashlib.sha256()
            for m in _MODULES:
                with open(os.path.join(here, m + ".py"), "rb") as f:
                    digest.update(f.read())
            digest = digest.hexdigest()
            from .lstm import _lstm_rows

            cache_dir = _lstm_rows._cache._cache_path
            stamp = os.path.join(cache_dir, _STAMP)
            try:
                with open(stamp) as f:
                    if f.read().strip() == digest:
                        return
            except OSError:
                pass
            for name in os.listdir(cache_dir):
                if name.endswith((".nbi", ".nbc")) and name.split(".")[0] in _MODULES:
                    try:
                        os.remove(os.path.join(cache_dir, name))
                    except OSError:
                        pass
            os.makedirs(cache_dir, exist_ok=True)
            with open(stamp, "w") as f:
                f.write(digest + "\n")
        except Exception:  # a read-only or odd cache location: keep Numba's own behaviour
            pass


def check_dtypes(x, *arrays):
    ensure_fresh_cache()
    dt = np.dtype(getattr(x, "dtype", None))
    assert dt in _FLOATS, f"CPU RNN kernels take float32 or float64 inputs, got {dt}"
    for a in arrays:
        if a is not None:
            assert np.dtype(a.dtype) == dt, f"dtype mismatch: {a.dtype} vs input {dt}"
    return dt


def padded_bias(b, size, padded, dtype):
    """Bias (size,) or None as a zero-padded (padded,) C array."""
    out = np.zeros(padded, dtype)
    if b is not None:
        out[:size] = np.asarray(b, dtype=dtype).reshape(size)
    return out


def input_c(x, time_major):
    """x as a C-contiguous 3-D array in its own axis order; returns (x, B, T)."""
    xc = np.ascontiguousarray(x)
    if time_major:
        return xc, xc.shape[1], xc.shape[0]
    return xc, xc.shape[0], xc.shape[1]


def mask_arg(step_mask, T, B):
    """(mask array (T, B) bool C-contiguous, has_mask)."""
    if step_mask is None:
        return np.ones((1, 1), np.bool_), False
    m = np.ascontiguousarray(step_mask, dtype=np.bool_)
    assert m.shape == (T, B), f"step_mask must be (T, B) = {(T, B)}, got {m.shape}"
    return m, True


def out_buffer(B, T, H, dtype, return_all_outputs, time_major):
    T_out = T if return_all_outputs else 1
    shape = (T_out, B, H) if time_major else (B, T_out, H)
    return np.empty(shape, dtype)


def pack_weights(kernel, recurrent_kernel, G, dtype, chunks, recurrent_cols=None):
    """(PW, PU, Gp): kernel in 2-vector panels (the projection GEMM has many rows), the
    recurrent kernel in panels sized for the widest chunk's row count, and the padded width
    Gp that both fit in."""
    from ._gemm import pack, panel_vectors, panel_width

    rows = max(n1 - n0 for n0, n1 in chunks)
    nv = panel_vectors(rows)
    PW = pack(kernel, 0, G, panel_width(dtype, 2))
    PU = pack(recurrent_kernel, 0, recurrent_cols or G, panel_width(dtype, nv))
    Gp = max(PW.shape[0] * PW.shape[2], PU.shape[0] * PU.shape[2])
    return PW, PU, Gp


def projection_buffer(T, B, Gp, dtype, chunks, width=None):
    """Zeroed (tau, B, width or Gp) buffer for tau steps of input projection, tau chosen so that
    one chunk's share stays about _XP_BLOCK_BYTES (L2-resident between projection and use)."""
    rows = max(n1 - n0 for n0, n1 in chunks)
    per_step = max(1, rows * (width or Gp) * np.dtype(dtype).itemsize)
    tau = int(max(1, min(T, _XP_BLOCK_BYTES // per_step)))
    return np.zeros((tau, B, width or Gp), dtype)


def max_threads():
    try:
        import numba

        n = numba.get_num_threads()
    except Exception:  # pragma: no cover - numba without threading support
        n = os.cpu_count() or 1
    return max(1, int(n))


def _get_pool(workers):
    """A process-wide pool with at least ``workers`` threads (a fresh one after a fork)."""
    global _pool, _pool_size, _pool_pid
    with _pool_lock:
        if _pool is None or _pool_size < workers or _pool_pid != os.getpid():
            _pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="gpukb-cpu-rnn")
            _pool_size = workers
            _pool_pid = os.getpid()
        return _pool


def row_chunks(B, flops):
    """Row boundaries [(n0, n1), ...]: a few chunks per thread, so that a thread slowed down by
    other load on the machine hands its remaining chunks to the others."""
    nt = max_threads()
    if nt <= 1 or B < 2 * _MIN_ROWS or flops < _MIN_FLOPS_TO_SPLIT:
        return [(0, B)]
    nchunks = max(2, min(_CHUNKS_PER_THREAD * nt, B // _MIN_ROWS))
    bounds = [0]
    for i in range(1, nchunks):
        bounds.append(min(B, ((i * B // nchunks + _ROW_ALIGN - 1) // _ROW_ALIGN) * _ROW_ALIGN))
    bounds.append(B)
    return [(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def run_chunks(fn, args, chunks):
    """fn(*args, n0, n1) over row chunks: the calling thread and up to max_threads() - 1 pool
    threads take chunks from a shared list until none is left."""
    if len(chunks) == 1:
        fn(*args, *chunks[0])
        return
    nworkers = min(max_threads(), len(chunks)) - 1
    todo = list(reversed(chunks))
    lock = threading.Lock()

    def work():
        while True:
            with lock:
                if not todo:
                    return
                n0, n1 = todo.pop()
            fn(*args, n0, n1)

    pool = _get_pool(nworkers)
    futures = [pool.submit(work) for _ in range(nworkers)]
    try:
        work()
    finally:
        for f in futures:
            f.result()
