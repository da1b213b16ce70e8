"""Python-side plumbing shared by the LSTM/GRU/SimpleRNN CPU kernels.

- dtype checks (cheap asserts: the caller validated shapes),
- weight packing and the buffer of input projections (computed a block of steps ahead),
- output/state buffers,
- splitting the work over threads (the kernels release the GIL): a large batch by rows, each
  thread running the whole time loop on its own rows with no meeting per step (row_chunks); a
  batch too small for that by units, each thread computing its share of every step's units and
  the threads meeting once per step (unit_chunks, _sync);
- splitting each chunk's time loop into blocks of steps, one compiled call each, so that Ctrl-C
  stops a long call quickly (see run_chunks).
"""

import os
import queue
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import NamedTuple

import numpy as np

from ._numba_cache import ensure_fresh_cache

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))

# The options of every compiled CPU kernel that computes: FMA contraction only (no NaN/inf
# assumptions), NumPy's error model. The cell definitions (kernels/cells) compile with the options
# of their caller, so they must be the same everywhere (see kernels/cells/_jit.py).
KERNEL_OPTIONS = dict(fastmath={"contract"}, error_model="numpy")
# ... and of the compiled loops that allocate nothing (the time loops, the GEMM's row panels):
# without Numba's reference counting. With it, every array view a loop makes (a row z[n], a
# slice of it) atomically increments and decrements its parent's count: at LSTM
# (256, 60, 16, 32) 48% of one thread's time went to those two instructions, and with two
# threads each count's cache line went back and forth between the cores at every row
# (one thread 2.23 -> 1.39 ms, two 1.30 -> 0.83 ms; AMD EPYC, 2026-12-04). The arrays all come
# from the caller, who keeps them alive for the call.
NO_REFCOUNT = dict(_nrt=False)


class Flags(NamedTuple):
    """What the compiled time loops read of a call: its LoopOptions, and whether it has a mask."""

    go_backwards: bool
    zero_output_for_mask: bool
    return_all_outputs: bool
    time_major: bool
    has_mask: bool

    @classmethod
    def of(cls, options, has_mask) -> "Flags":
        return cls(*options.normalized(), bool(has_mask))

# Below this many flops for the whole recurrence a second thread costs more than it saves.
_MIN_FLOPS_TO_SPLIT = 4.0e6
_ROW_ALIGN = 2   # chunk boundaries on even rows (the GEMM's row tiles are 8/6/4/2/1)
_MIN_ROWS = 8    # rows per chunk, at least
_MIN_SMALL_ROWS = 4   # rows per thread, at least, for a batch under 2 * _MIN_ROWS (small_batch_rows)
# ... or 2 when the recurrent kernel takes at most half of L1 and the call has this many flops
_MIN_TINY_ROWS = 2
_MIN_FLOPS_FOR_TINY_ROWS = 3.0e7
_CHUNKS_PER_THREAD = 4


def _cache_bytes(level, default):
    """One core's data (or unified) cache of this level in bytes (Linux sysfs), else default."""
    base = "/sys/devices/system/cpu/cpu0/cache"
    try:
        for index in sorted(os.listdir(base)):
            with open(os.path.join(base, index, "level")) as f:
                if f.read().strip() != str(level):
                    continue
            with open(os.path.join(base, index, "type")) as f:
                if f.read().strip() == "Instruction":
                    continue
            with open(os.path.join(base, index, "size")) as f:
                size = f.read().strip().upper()
            scale = {"K": 1 << 10, "M": 1 << 20}.get(size[-1:], 1)
            return int(size.rstrip("KM")) * scale
    except (OSError, ValueError):
        pass
    return default


L1_BYTES = _cache_bytes(1, 32 << 10)
L2_BYTES = _cache_bytes(2, 1 << 20)
_XP_BLOCK_BYTES = 128 * 1024  # input projection computed this many bytes (per chunk) ahead
# A unit split (unit_chunks) gives each core its share of the recurrent kernel to stream at every
# step, and the threads meet once per step (about a microsecond). It pays when the kernel does
# not fit in L1 (each core then reads half as much from L2 or beyond) and a step has enough work:
# split kernels of at least this many times L1, steps of at least this many flops.
# Measured on the 2-core AMD EPYC (L1d 48 KiB, L2 1 MiB; 2026-12-04, after the loops lost
# Numba's reference counting; split against one thread, medians of 7 interleaved rounds in one
# process): LSTM B = 1, H = 128 (U 256 KiB, 0.2 MFLOP a step) 0.60x at T = 1000, 0.73x at T =
# 254; B = 4, H = 128 0.78x; GRU B = 1 and 4, H = 128 (192 KiB) 0.60x and 0.77x; SimpleRNN H = 256
# (256 KiB) 0.69-0.75x; but LSTM B = 4, H = 64 (64 KiB) 1.03x, GRU B = 4, H = 64 (48 KiB) 1.09x,
# SimpleRNN H = 128 (64 KiB) 1.03-1.05x. (Before, with every row view's reference count going
# back and forth between the cores, kernels under half of L2 were split only at 16 times these
# flops: LSTM H = 128 split was then 1.04-1.37x slower.)
_SPLIT_WEIGHTS_PAST_L1 = 2.0
_MIN_STEP_FLOPS_TO_SPLIT_UNITS = 1.0e5
# A unit split starts the call's other threads and meets once per step: split only calls that
# one thread would spend at least this long on, estimated per step from the flops (at
# _SPLIT_FLOPS_PER_SECOND) or from streaming the recurrent kernel (from L2, or from beyond it),
# whichever is slower. The estimate runs about twice the time measured; the split cost about
# 85 us a call more at LSTM (1, 20, 64, 128) (0.124 -> 0.208 ms) and broke even at one thread's
# 0.3 ms (LSTM (1, 100, 64, 128), estimated 0.58 ms: 0.96x); (1, 50, 128, 256), estimated
# 1.2 ms, 0.80x; (4, 20, 128, 256), estimated 0.63 ms, 1.07x (EPYC, 2026-12-04).
_MIN_SECONDS_TO_SPLIT_UNITS = 0.7e-3
_SPLIT_FLOPS_PER_SECOND = 1.0e11
_L2_BYTES_PER_SECOND = 4.5e10
_FAR_BYTES_PER_SECOND = 2.0e10
_MAX_UNIT_THREADS = 8

# One compiled call runs one block of time steps of one row chunk, sized to take about this long:
# Python delivers Ctrl-C to the calling thread only between compiled calls.
_BLOCK_SECONDS = 0.1
# A chunk's first block is sized from a deliberately slow estimate (each later block from the
# previous one's measured time): float32 flops per second and thread (float64: half), plus what
# the flop count misses (gates, masking, loop and call overhead) per row and step and per step.
# Too slow an estimate only costs a few more calls on long sequences; the README's benchmark
# sizes fit in one block.
_FLOPS_PER_SECOND = 4.0e9
_ROW_STEP_SECONDS = 1.0e-6
_STEP_SECONDS = 1.0e-6
_MAX_GROWTH = 4  # a block at most this many times longer than the previous one

_pool = None
_pool_size = 0
_pool_pid = None
_pool_lock = threading.Lock()


def check_dtypes(x, *arrays):
    ensure_fresh_cache()
    dt = np.dtype(getattr(x, "dtype", None))
    assert dt in _FLOATS, f"CPU RNN kernels take float32 or float64 inputs, got {dt}"
    for a in arrays:
        if a is not None:
            assert a.dtype == dt, f"dtype mismatch: {a.dtype} vs input {dt}"
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


_placeholders: dict = {}


def placeholder(shape, dtype):
    """A small zeroed array that a kernel takes in place of one that a call does not use (a
    mask, a kind's missing state or buffer, the meeting words of a call on one thread): one
    per (shape, dtype) for the whole process, so the kernels never write into one."""
    key = (shape, dtype)
    array = _placeholders.get(key)
    if array is None:
        array = _placeholders.setdefault(key, np.zeros(shape, dtype))
    return array


_NO_MASK = np.ones((1, 1), np.bool_)   # never read: every step valid (and never written)


def mask_arg(step_mask, T, B):
    """(mask array (T, B) bool C-contiguous, has_mask)."""
    if step_mask is None:
        return _NO_MASK, False
    m = np.ascontiguousarray(step_mask, dtype=np.bool_)
    assert m.shape == (T, B), f"step_mask must be (T, B) = {(T, B)}, got {m.shape}"
    return m, True


def out_buffer(B, T, H, dtype, return_all_outputs, time_major):
    T_out = T if return_all_outputs else 1
    shape = (T_out, B, H) if time_major else (B, T_out, H)
    return np.empty(shape, dtype)


def pack_weights(kernel, recurrent_kernel, G, dtype, rows, recurrent_cols=None):
    """(PW, PU, Gp): kernel in 2-vector panels (the projection GEMM has many rows), the
    recurrent kernel in panels sized for the widest chunk's row count ``rows``, and the padded
    width Gp that both fit in."""
    from ._gemm import pack, panel_vectors, panel_width

    nv = panel_vectors(rows)
    PW = pack(kernel, 0, G, panel_width(dtype, 2))
    PU = pack(recurrent_kernel, 0, recurrent_cols or G, panel_width(dtype, nv))
    Gp = max(PW.shape[0] * PW.shape[2], PU.shape[0] * PU.shape[2])
    return PW, PU, Gp


def projection_buffer(T, B, Gp, dtype, rows, chunks, width=None):
    """Zeroed (tau, B, width or Gp) buffer for tau steps of input projection, tau chosen so that
    one chunk's share (``rows`` rows, its part of the units) stays about _XP_BLOCK_BYTES
    (L2-resident between projection and use)."""
    n0, n1, u0, u1 = chunks[0]
    share = (u1 - u0) / chunks[-1][3] if chunks[-1][3] else 1.0
    per_step = max(1, int(rows * (width or Gp) * share) * np.dtype(dtype).itemsize)
    tau = int(max(1, min(T, _XP_BLOCK_BYTES // per_step)))
    from ._gemm import aligned_empty

    return aligned_empty((tau, B, width or Gp), dtype, zeroed=True)   # 512-bit loads and stores


def max_threads():
    """``numba.get_num_threads()``: NUMBA_NUM_THREADS, or what ``numba.set_num_threads`` set.
    Until Numba's own thread pool runs (set_num_threads starts it) that is the configured number,
    read here without starting the pool: the kernels run on threads of their own, and starting
    Numba's costs a process's first call tens of milliseconds."""
    global _parallel
    try:
        if _parallel is None:   # imported once: a repeated call asks this at every call
            from numba.np.ufunc import parallel as _parallel
        if getattr(_parallel, "_is_initialized", True):
            n = _parallel.get_num_threads()
        else:
            n = _parallel.config.NUMBA_NUM_THREADS
    except Exception:  # pragma: no cover - numba without threading support
        n = os.cpu_count() or 1
    return max(1, int(n))


_parallel = None   # numba.np.ufunc.parallel, once max_threads has imported it


def _get_pool(workers):
    """A process-wide pool with at least ``workers`` threads (a fresh one after a fork)."""
    global _pool, _pool_size, _pool_pid
    with _pool_lock:
        if _pool is None or _pool_size < workers or _pool_pid != os.getpid():
            _pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="gpukb-cpu-rnn")
            _pool_size = workers
            _pool_pid = os.getpid()
        return _pool


class _GangWorker:
    """A thread that runs one task at a time for whoever reserved it (see _reserve_workers)."""

    def __init__(self):
        self.tasks = queue.SimpleQueue()
        threading.Thread(target=self._run, name="gpukb-cpu-rnn-units", daemon=True).start()

    def _run(self):
        while True:
            function, future = self.tasks.get()
            try:
                future.set_result(function())
            except BaseException as error:  # noqa: BLE001 - handed to the caller
                future.set_exception(error)
            # Let the task go before waiting for the next one: its closure holds the call's
            # arrays (outputs, work arrays), which would otherwise live until this worker's
            # next task (and the backward's reused buffers could not be reused).
            del function, future

    def submit(self, function):
        future = Future()
        self.tasks.put((function, future))
        return future


_idle_workers: list = []
_idle_pid = None


def _reserve_workers(n):
    """n worker threads for this call alone. A unit split's threads wait for each other every
    step, so they must all run at once: a shared pool could start some tasks of two calls and
    queue the rest behind them, and both would wait forever."""
    global _idle_pid
    with _pool_lock:
        if _idle_pid != os.getpid():   # after a fork the threads are gone
            _idle_workers.clear()
            _idle_pid = os.getpid()
        taken = [_idle_workers.pop() for _ in range(min(n, len(_idle_workers)))]
    return taken + [_GangWorker() for _ in range(n - len(taken))]


def _release_workers(workers):
    with _pool_lock:
        if _idle_pid == os.getpid():
            _idle_workers.extend(workers)


def row_chunks(B, flops, weight_bytes=0):
    """Row boundaries [(n0, n1), ...]: a few chunks per thread, so that a thread slowed down by
    other load on the machine hands its remaining chunks to the others; one per thread when the
    recurrent kernel (``weight_bytes``) does not fit in half a core's L2 cache: every chunk
    streams all of it from farther out at every step, so fewer chunks read it fewer times (LSTM
    (256, 20, 512, 1024) on the 2-core development machine: 510-515 ms against 670-840 ms)."""
    nt = max_threads()
    if nt <= 1 or B < 2 * _MIN_ROWS or flops < _MIN_FLOPS_TO_SPLIT:
        return [(0, B)]
    per_thread = _CHUNKS_PER_THREAD if weight_bytes <= L2_BYTES // 2 else 1
    nchunks = max(2, min(per_thread * nt, B // _MIN_ROWS))
    if nchunks > nt:   # a multiple of the threads: 3 chunks on 2 threads made one thread run
        # two (LSTM (24, 200, 32, 64): 1.21 ms against 1.01 with 2 chunks, EPYC, 2026-12-04)
        nchunks -= nchunks % nt
    bounds = [0]
    for i in range(1, nchunks):
        bounds.append(min(B, ((i * B // nchunks + _ROW_ALIGN - 1) // _ROW_ALIGN) * _ROW_ALIGN))
    bounds.append(B)
    return [(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def small_batch_rows(B, flops, weight_bytes, tiny_rows=True):
    """Row boundaries for a batch too small for row_chunks (under 2 * _MIN_ROWS rows) that still
    gives every thread _MIN_SMALL_ROWS rows: one chunk per thread, no spare chunks (a chunk of
    fewer rows runs its GEMM on a narrower row tile, and a thread running two chunks pays every
    step twice), when the recurrent kernel (``weight_bytes``) fits in one core's L2 (each thread
    reads all of it every step; past L2 the unit split, which gives each core half, stays).
    [(0, B)] when it does not apply.

    Measured on the 2-core AMD EPYC (2026-12-04, in-process A/B against the forward's previous
    choice, one thread or the unit split): LSTM (8, 500, 16, 32) 0.70x, (8, 500, 32, 64) 0.62x,
    (8, 300, 32, 128) 0.60x, (12, 300, 32, 64) 0.63x, (8, 200, 32, 256) 0.95x, (8, 100, 64, 512)
    0.98x, (8, 50, 512, 1024) 1.05x (U of 4 and 16 MiB: past L2); GRU (8, 500, 16, 32) 0.71x,
    (8, 300, 32, 128) 0.61x, (8, 200, 32, 256) 0.85x; GRU with reset_after=False (8, 300, 32, 128)
    0.70x; SimpleRNN (8, 200, 128, 256) 0.62x, (12, 300, 32, 64) 0.81x. Two rows a thread lost
    (LSTM (4, 200, 64, 128) 1.36x, (4, 100, 128, 512) 1.85x; GRU (4, 500, 16, 32) 1.10x), hence
    _MIN_SMALL_ROWS = 4, except for a recurrent kernel within half of L1 in a long enough call
    (_MIN_TINY_ROWS, _MIN_FLOPS_FOR_TINY_ROWS), measured again once the loops had lost Numba's
    reference counting (in-process A/B, 7 rounds): LSTM (4, 1000, 16, 32) 0.83x, (6, 1000, 16,
    32) 0.77x, GRU (6, 1000, 16, 32) 0.81x, (4, 1000, 16, 32) 0.97x; but SimpleRNN (4, 1000, 16,
    32) (12 MFLOP, 0.2 ms) 1.44x and (4, 500, 32, 64) 1.21x, LSTM (4, 500, 32, 64) (U 64 KiB,
    past L1) 1.11x. ``tiny_rows=False``: never under _MIN_SMALL_ROWS (the backward's reverse
    loop: LSTM (4, 1000, 16, 32) fwd+bwd 1.31x slower with two rows a thread).
    """
    nt = max_threads()
    least = _MIN_SMALL_ROWS
    if tiny_rows and weight_bytes <= L1_BYTES // 2 and flops >= _MIN_FLOPS_FOR_TINY_ROWS and \
            _MIN_SMALL_ROWS:
        least = min(least, _MIN_TINY_ROWS)
    chunks = min(nt, B // least) if least else 1
    if nt <= 1 or chunks < 2 or flops < _MIN_FLOPS_TO_SPLIT or weight_bytes > L2_BYTES:
        return [(0, B)]
    bounds = [0] + [min(B, ((i * B // chunks + _ROW_ALIGN - 1) // _ROW_ALIGN) * _ROW_ALIGN)
                    for i in range(1, chunks)] + [B]
    return [(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def unit_chunks(B, H, step_flops, panel_columns, weight_bytes, threads=None, steps=None):
    """Unit boundaries [(u0, u1), ...], one per thread, for a call whose batch is too small to
    split (see row_chunks), or None to run it on one thread.

    The cost rule: every thread computes its units of every step (its share of the recurrent
    GEMM, the input projection and the gate updates), then the threads meet (_sync.meet, about a
    microsecond). A call is split when its recurrent kernel (``weight_bytes``) is at least
    _SPLIT_WEIGHTS_PAST_L1 times L1 (each core streams its share instead of the whole), a step
    of ``step_flops`` flops still has work to share (_MIN_STEP_FLOPS_TO_SPLIT_UNITS), the
    call's ``steps`` (when given) take one thread long enough to pay for starting the others
    (_MIN_SECONDS_TO_SPLIT_UNITS), and every share lies on whole packed panels of
    ``panel_columns`` columns (the widest of the call's packings).
    """
    nt = min(max_threads() if threads is None else threads, _MAX_UNIT_THREADS)
    if nt <= 1 or B >= 2 * _MIN_ROWS or step_flops < _MIN_STEP_FLOPS_TO_SPLIT_UNITS:
        return None
    if weight_bytes < _SPLIT_WEIGHTS_PAST_L1 * L1_BYTES:
        return None
    if steps is not None and steps * _step_seconds(step_flops, weight_bytes) < \
            _MIN_SECONDS_TO_SPLIT_UNITS:
        return None
    if H % panel_columns:
        return None
    panels = H // panel_columns
    # No more threads than the kernel has shares of L1's size: a share that fits in L1 gains
    # nothing from being split again, and every thread joins every meeting (a rule for machines
    # with more cores; the development machine has two).
    nt = min(nt, panels, max(2, int(weight_bytes // max(1, L1_BYTES))))
    if nt <= 1:
        return None
    bounds = [i * panels // nt * panel_columns for i in range(nt + 1)]
    return [(a, b) for a, b in zip(bounds[:-1], bounds[1:])]


def _step_seconds(step_flops, weight_bytes):
    """One thread's time for a step, estimated: its flops, or streaming the recurrent kernel
    (from L2 when it fits there, else from farther out), whichever takes longer."""
    bandwidth = _L2_BYTES_PER_SECOND if weight_bytes <= L2_BYTES else _FAR_BYTES_PER_SECOND
    return max(step_flops / _SPLIT_FLOPS_PER_SECOND, weight_bytes / bandwidth)


def row_step_seconds(row_flops, dtype):
    """Slow estimate of the seconds one thread needs per row and step, for row_flops flops."""
    return row_flops * dtype.itemsize / (4 * _FLOPS_PER_SECOND) + _ROW_STEP_SECONDS


def _run_time_blocks(fn, args, part, steps, seconds_per_step, align, stop, first=0):
    """fn(*args, *part, s0, s1) over consecutive blocks [s0, s1) of range(first, steps): the
    first sized from seconds_per_step, each next one from the last one's measured time; returns
    early once ``stop`` is non-empty. Blocks are whole multiples of ``align`` steps (the kernel's
    projection blocks) where possible; the results do not depend on the blocks."""
    step_seconds = seconds_per_step + _STEP_SECONDS
    if (steps - first) * step_seconds <= _BLOCK_SECONDS:
        fn(*args, *part, first, steps)   # a short call: one block, nothing to time
        return
    n = int(_BLOCK_SECONDS / step_seconds)
    s0 = first
    while True:
        n = max(1, n // align * align if n >= align else n)
        if steps - s0 <= n + n // 2:   # the last block (no short one after it)
            fn(*args, *part, s0, steps)
            return
        start = time.perf_counter()
        fn(*args, *part, s0, s0 + n)
        elapsed = time.perf_counter() - start
        s0 += n
        if stop:
            return
        n = int(min(_MAX_GROWTH * n, n * _BLOCK_SECONDS / max(elapsed, 1e-9)))


def new_sync():
    """The shared words of a unit split's meetings (see _sync)."""
    from ._sync import new_sync

    return new_sync()


def run_chunks(fn, args, chunks, steps, row_seconds, align, sync=None, first=0):
    """fn(*args, n0, n1, u0, u1, s0, s1) over the chunks (n0, n1, u0, u1) (rows [n0, n1), units
    [u0, u1) of H) and, for each chunk, blocks [s0, s1) of range(first, steps) (see
    _run_time_blocks; ``row_seconds`` from row_step_seconds, for all H units; ``align``: the
    kernel's projection block).

    Row chunks (every chunk has all units): the calling thread and up to max_threads() - 1 pool
    threads take chunks from a shared list until none is left. Unit chunks (``sync`` given: the
    chunks split the units and meet every step): one thread per chunk, all running at once.

    Ctrl-C: Python runs signal handlers in the main thread only, between bytecodes, never inside
    a compiled call; so the calling thread returns to Python after each of its blocks. When it
    raises (KeyboardInterrupt or anything else), the pool threads stop after their current block
    (a unit split's threads at once: ``sync``'s stop flag), and the exception propagates once
    they have: nothing keeps running after the call.
    """
    stop = []   # non-empty: the calling thread gave up, the others stop too

    units = max(1, chunks[-1][3])   # H: the last chunk ends at the last unit

    def seconds(part):   # one step of a chunk, estimated
        n0, n1, u0, u1 = part
        return (n1 - n0) * row_seconds * (u1 - u0) / units

    if len(chunks) == 1:
        _run_time_blocks(fn, args, chunks[0], steps, seconds(chunks[0]), align, stop, first)
        return
    together = sync is not None
    nworkers = len(chunks) - 1 if together else min(max_threads(), len(chunks)) - 1
    todo = list(reversed(chunks))
    lock = threading.Lock()

    def work():
        while not stop:
            with lock:
                if not todo:
                    return
                part = todo.pop()
            _run_time_blocks(fn, args, part, steps, seconds(part), align, stop, first)
            if together:   # exactly one chunk per thread: they wait for each other
                return

    futures = []
    workers = _reserve_workers(nworkers) if together else None
    try:
        pool = workers or [_get_pool(nworkers)] * nworkers
        for worker in pool:
            futures.append(worker.submit(work))
        work()
        for f in futures:
            f.result()
    except BaseException:
        stop.append(True)
        if together:
            sync[1] = 1
        wait(futures)
        raise
    finally:
        if workers:
            _release_workers(workers)
