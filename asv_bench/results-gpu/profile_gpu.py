"""Where the cuda backend's time goes, for the next GPU session (the first one found the
persistent kernel at 9-36 us per step and the per-step path host-bound at ~0.22 ms per step; see
README.md beside this file).

    python asv_bench/results-gpu/profile_gpu.py tilings   # the persistent kernel, tiling by tiling
    python asv_bench/results-gpu/profile_gpu.py host      # cProfile of the per-step path's loop
    python asv_bench/results-gpu/profile_gpu.py one       # one persistent call, for ncu
    python asv_bench/results-gpu/profile_gpu.py barriers  # what one grid barrier costs
    python asv_bench/results-gpu/profile_gpu.py launch    # per-step path: dispatcher vs RepeatedLaunch
    python asv_bench/results-gpu/profile_gpu.py sweep     # persistent kernel: every tiling, JSON lines
    python asv_bench/results-gpu/profile_gpu.py call      # one whole persistent call: host vs kernel

``tilings``: float32 LSTM at T=1000, the planner's tiling and forced ones, microseconds per step
(CUDA events, best of 5): one block (no grid sync) against the same work over many blocks, the
same single block with the grid sync on (what a grid barrier costs alone), and other k-splits.
``barriers``: microseconds per barrier of numba-cuda's grid sync (``cuda.cg.this_grid().sync()``,
what the persistent kernel uses) against a barrier of one atomic counter (thread 0 of each block
adds one, then spins on atomic reads), at 1-132 blocks of 256 threads (GPU only).
``host``: a per-step call at (64, 1024), T=200, under cProfile (the 25 costliest functions by own
time) and the host time of the call against the GPU time. Under NUMBA_ENABLE_CUDASIM=1 each
mode runs at tiny sizes as a smoke test.
"""

from __future__ import annotations

import cProfile
import pstats
import sys
import time

import numpy as np

import gpukb
from gpukb import _rnn
from gpukb._plan import PERSISTENT, Plan

CUDA = gpukb.get_backend("cuda")
SIM = CUDA.simulated
xp = CUDA.xp


def lstm_call(B, T, H, seed=0):
    rng = np.random.default_rng(seed)
    D = H
    W = (rng.standard_normal((D, 4 * H)) / np.sqrt(D)).astype(np.float32)
    U = (rng.standard_normal((H, 4 * H)) / np.sqrt(H)).astype(np.float32)
    b = (0.1 * rng.standard_normal(4 * H)).astype(np.float32)
    cell = gpukb.cells.lstm(xp.asarray(W), xp.asarray(U), xp.asarray(b))
    x = xp.asarray(rng.standard_normal((B, T, D)).astype(np.float32))
    states = [xp.zeros((B, H), np.float32), xp.zeros((B, H), np.float32)]
    return cell, x, states, _rnn.prepare(cell, x, states, xp=xp, backend="cuda")


def gpu_ms(fn, repeat=5):
    """Best GPU time of fn() in ms (wall time in the simulator)."""
    fn()
    best = float("inf")
    for _ in range(repeat):
        if SIM:
            start = time.perf_counter()
            fn()
            best = min(best, (time.perf_counter() - start) * 1e3)
            continue
        begin, end = xp.cuda.Event(), xp.cuda.Event()
        begin.record()
        fn()
        end.record()
        end.synchronize()
        best = min(best, xp.cuda.get_elapsed_time(begin, end))
    return best


def tilings():
    from gpukb.kernels.cuda import persistent

    shapes = [(1, 8, 4)] if SIM else [(1, 64, 1000), (8, 128, 1000), (1, 256, 1000), (8, 256, 200)]
    for B, H, T in shapes:
        *_, call = lstm_call(B, T, H)
        planned = persistent.plan(B, H, persistent.LSTM, 4)
        forced = {"planned": planned}
        for label, kwargs in [("one block", dict(unit_tile=H, coop=False)),
                              ("one block + grid sync", dict(unit_tile=H, coop=True)),
                              ("one block, ksplit 1", dict(unit_tile=H, ksplit=1, coop=False)),
                              ("units of 8, ksplit 4", dict(unit_tile=8, ksplit=4)),
                              ("units of 32, ksplit 8", dict(unit_tile=32, ksplit=8))]:
            forced[label] = persistent.plan(B, H, persistent.LSTM, 4, **kwargs)
        print(f"== LSTM float32 B={B} H={H} T={T}")
        for label, tiling in forced.items():
            if tiling is None:
                print(f"  {label:26} does not fit")
                continue
            plan = Plan("cuda", PERSISTENT, label, detail=tiling)
            ms = gpu_ms(lambda: CUDA.run_plan(plan, call))
            print(f"  {label:26} {ms * 1e3 / T:8.2f} us/step  {tiling}", flush=True)


def host():
    B, H, T = (2, 8, 4) if SIM else (64, 1024, 200)
    cell, x, states, _ = lstm_call(B, T, H)
    CUDA.cell_path = "step"
    run = lambda: gpukb.rnn(cell, x, states, backend="cuda")  # noqa: E731
    gpu = gpu_ms(run)
    start = time.perf_counter()
    run()
    host_ms = (time.perf_counter() - start) * 1e3
    print(f"per-step path B={B} H={H} T={T}: GPU {gpu:.2f} ms, host {host_ms:.2f} ms "
          f"({host_ms * 1e3 / T:.1f} us per step on the host)")
    profile = cProfile.Profile()
    profile.enable()
    run()
    profile.disable()
    pstats.Stats(profile).sort_stats("tottime").print_stats(25)


def call():
    """One whole gpukb.rnn call on the persistent path (auto) at (1, 256) and (8, 256), T=100:
    GPU time of the call, GPU time of the kernel alone (run_plan on a prepared call), host time,
    and cProfile of 20 calls (the 25 costliest functions by own time): where the ~1.4 ms a call
    beyond the kernel goes (second GPU session, README beside this file)."""
    shapes = [(1, 8, 4)] if SIM else [(1, 256, 100), (8, 256, 100)]
    CUDA.cell_path = "auto"
    for B, H, T in shapes:
        cell, x, states, prepared = lstm_call(B, T, H)
        whole = lambda: gpukb.rnn(cell, x, states, backend="cuda")  # noqa: E731
        plan = CUDA.plan(prepared)
        kernel_only = lambda: CUDA.run_plan(plan, prepared)  # noqa: E731
        gpu_whole, gpu_kernel = gpu_ms(whole), gpu_ms(kernel_only)
        start = time.perf_counter()
        whole()
        host = (time.perf_counter() - start) * 1e3
        print(f"B={B} H={H} T={T} ({plan.detail}): whole call GPU {gpu_whole:.3f} ms, "
              f"run_plan alone GPU {gpu_kernel:.3f} ms, whole call host {host:.3f} ms", flush=True)
        profile = cProfile.Profile()
        profile.enable()
        for _ in range(20):
            whole()
        profile.disable()
        pstats.Stats(profile).sort_stats("tottime").print_stats(25)


def launch():
    """The per-step path with numba-cuda's dispatcher at every launch against RepeatedLaunch
    (arguments converted once), forward and forward + backward: GPU and host ms per call."""
    from gpukb.kernels.cuda import _runtime

    shapes = [(2, 8, 4)] if SIM else [(8, 256, 100), (32, 512, 100), (64, 1024, 100), (256, 1024, 100)]
    CUDA.cell_path = "step"
    for B, H, T in shapes:
        cell, x, states, _ = lstm_call(B, T, H)
        U = cell.recurrent_kernel
        h = xp.zeros((B, H), np.float32)
        rec = xp.empty((B, 4 * H), np.float32)

        def gemms():
            for _ in range(T):
                xp.dot(h, U, out=rec)

        def forward():
            gpukb.rnn(cell, x, states, backend="cuda")

        def train():
            (_, outputs, _), pullback = gpukb.rnn_vjp(cell, x, states, backend="cuda")
            pullback(xp.ones_like(outputs))

        line = [f"B={B:3d} H={H:4d} T={T}: gemms alone {gpu_ms(gemms):7.2f} ms"]
        for fast in (False, True):
            _runtime.FAST_LAUNCH = fast
            for name, fn in (("fwd", forward), ("fwd+bwd", train)):
                gpu = gpu_ms(fn)
                start = time.perf_counter()
                fn()
                host = (time.perf_counter() - start) * 1e3
                line.append(f"{'repeated' if fast else 'dispatch'} {name} GPU {gpu:7.2f} host {host:7.2f}")
        print(" | ".join(line), flush=True)
    _runtime.FAST_LAUNCH = True


def sweep():
    """The persistent kernel's time per step for every unit tile and threads per block that fit,
    at small batches: the data for the size rule (persistent.plan). JSON lines."""
    import json

    from gpukb.kernels.cuda import persistent

    shapes = ([(1, 8, 4)] if SIM else
              [(1, 64, 300), (1, 128, 300), (1, 256, 300), (1, 512, 300), (4, 128, 300),
               (8, 128, 300), (8, 256, 300), (8, 512, 200), (16, 256, 200), (32, 256, 200)])
    if len(sys.argv) > 2:   # BxH,BxH,...: other shapes, T=300
        shapes = [(*map(int, text.split("x")), 300) for text in sys.argv[2].split(",")]
    for B, H, T in shapes:
        *_, call = lstm_call(B, T, H)
        planned = persistent.plan(B, H, persistent.LSTM, 4, max_batch=64)
        for threads in (128, 256, 512, 1024):
            for hs in (1, 2, 4, 8, 16, 32, 64):
                if hs > H:
                    continue
                tiling = persistent.plan(B, H, persistent.LSTM, 4, max_batch=64, threads=threads,
                                         unit_tile=hs)
                if tiling is None:
                    continue
                plan = Plan("cuda", PERSISTENT, "sweep", detail=tiling)
                try:
                    us = gpu_ms(lambda: CUDA.run_plan(plan, call)) * 1e3 / T
                except Exception as error:   # noqa: BLE001 - a tiling the device refuses
                    us = repr(error)[:80]
                print(json.dumps(dict(B=B, H=H, T=T, threads=threads, tiling=list(tiling),
                                      planned=tiling == planned, us_per_step=us)), flush=True)


def one():
    B, H, T = (1, 8, 4) if SIM else (8, 128, 1000)
    cell, x, states, _ = lstm_call(B, T, H)
    gpukb.rnn(cell, x, states, backend="cuda")   # compile: ncu skips this launch (-s)
    if not SIM:
        xp.cuda.get_current_stream().synchronize()
    gpukb.rnn(cell, x, states, backend="cuda")
    if not SIM:
        xp.cuda.get_current_stream().synchronize()


def barriers():
    if SIM:
        print("barriers: GPU only (the simulator runs blocks one after another)")
        return
    from numba import cuda

    @cuda.jit
    def grid_syncs(n, out):
        grid = cuda.cg.this_grid()
        for _ in range(n):
            grid.sync()
        if cuda.grid(1) == 0:
            out[0] = n

    @cuda.jit
    def counter_barriers(n, counter, out):
        blocks = cuda.gridDim.x
        for i in range(n):
            cuda.syncthreads()
            if cuda.threadIdx.x == 0:
                cuda.threadfence()
                cuda.atomic.add(counter, 0, 1)
                target = (i + 1) * blocks
                while cuda.atomic.add(counter, 0, 0) < target:   # an atomic read: never hoisted
                    pass
                cuda.threadfence()
            cuda.syncthreads()
        if cuda.grid(1) == 0:
            out[0] = n

    n = 2000
    out = cuda.device_array(1, np.int64)
    for blocks in (1, 2, 8, 32, 132):
        counter = cuda.to_device(np.zeros(1, np.int64))
        times = {}
        for name, launch in (("grid sync", lambda: grid_syncs[blocks, 256](n, out)),
                             ("atomic counter", lambda: counter_barriers[blocks, 256](n, counter,
                                                                                   out))):
            launch()   # compile
            cuda.synchronize()
            best = float("inf")
            for _ in range(3):
                counter.copy_to_device(np.zeros(1, np.int64))
                start, end = cuda.event(), cuda.event()
                start.record()
                launch()
                end.record()
                end.synchronize()
                best = min(best, cuda.event_elapsed_time(start, end))
            times[name] = best * 1e3 / n
        print(f"{blocks:4d} blocks: " + ", ".join(f"{k} {v:.2f} us" for k, v in times.items()),
              flush=True)


if __name__ == "__main__":
    {"tilings": tilings, "host": host, "one": one, "barriers": barriers, "launch": launch,
     "sweep": sweep, "call": call}[sys.argv[1]]()
