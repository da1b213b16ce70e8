"""The GPU check of gpukb-dask (asv_bench/results-gpu/run_checks.sh runs it on a lent GPU machine):
CuPy chunks through the cuda backend on a dask-cuda cluster, the docs/dask.md example at a smaller
size, against one process. Needs a GPU, CuPy, dask, distributed and dask-cuda (without dask-cuda:
a plain LocalCluster of one worker process, and it says so).

    python plugins/gpukb-dask/gpu_check.py [--batch 65536 --blocks 4]

Prints, for one process (cuda backend, CuPy arrays) and the cluster: seconds (best of 3 after a
warm-up) and sequences per second; whether the results are bit for bit equal to one process's
(the CUDA kernels' per-row independence was never checked; a difference within float32 rounding
is reported, not an error) and that every result is a CuPy array. Exit status 1 on a wrong result.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

import numpy as np


def _best(fn, repeats=3):
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=65536)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--blocks", type=int, default=4)
    args = parser.parse_args()

    import cupy
    import dask
    import dask.array as da
    import distributed

    import gpukb

    B, T, D, H = args.batch, args.steps, 64, 128
    rng = np.random.default_rng(0)
    cell = gpukb.cells.lstm((rng.standard_normal((D, 4 * H)) / 8).astype(np.float32),
                            (rng.standard_normal((H, 4 * H)) / 16).astype(np.float32))
    x = rng.standard_normal((B, T, D)).astype(np.float32)
    h0 = np.zeros((B, H), np.float32)
    mask = rng.random((B, T)) < 0.9

    x_gpu, h_gpu, mask_gpu = cupy.asarray(x), cupy.asarray(h0), cupy.asarray(mask)
    expected = gpukb.rnn(cell, x_gpu, [h_gpu, h_gpu], mask=mask_gpu)
    one = _best(lambda: (gpukb.rnn(cell, x_gpu, [h_gpu, h_gpu], mask=mask_gpu),
                         cupy.cuda.runtime.deviceSynchronize()))

    try:
        from dask_cuda import LocalCUDACluster

        cluster = LocalCUDACluster(silence_logs=logging.ERROR, dashboard_address=":0")
        kind = f"dask_cuda.LocalCUDACluster ({len(cluster.workers)} worker(s), one per GPU)"
    except ImportError as error:
        cluster = distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                           silence_logs=logging.ERROR, dashboard_address=":0")
        kind = f"distributed.LocalCluster, 1 worker process (dask_cuda not importable: {error})"
    ok = True
    with cluster, distributed.Client(cluster):
        chunk = -(-B // args.blocks)
        xd = da.from_array(x, chunks=(chunk, T, D)).map_blocks(cupy.asarray).persist()
        result = gpukb.rnn(cell, xd, [h0, h0], mask=mask)      # NumPy states and mask: companions
        metas = {type(a._meta).__name__ for a in (result[0], result[1], *result[2])}
        got = dask.compute(*result)
        cluster_s = _best(lambda: dask.compute(*gpukb.rnn(cell, xd, [h0, h0], mask=mask)))
    print(f"LSTM B={B} T={T} D={D} H={H} float32, random mask; {args.blocks} blocks; {kind}")
    print(f"results' meta: {sorted(metas)}; computed types: "
          f"{sorted({type(a).__name__ for a in (got[0], got[1], *got[2])})}")
    for name, g, e in [("last_output", got[0], expected[0]), ("outputs", got[1], expected[1]),
                       ("h", got[2][0], expected[2][0]), ("c", got[2][1], expected[2][1])]:
        same = bool(cupy.array_equal(g, e))
        diff = float(cupy.abs(g - e).max())
        close = bool(cupy.allclose(g, e, rtol=1e-5, atol=1e-6))
        ok &= close and type(g) is cupy.ndarray
        print(f"{name}: bit for bit {same}, max |diff| {diff:.3g}, within 1e-5: {close}")
    print(f"one process (cuda backend): {one:.3f} s, {B / one:,.0f} sequences/s")
    print(f"cluster: {cluster_s:.3f} s, {B / cluster_s:,.0f} sequences/s (input persisted on the "
          "workers; the results come back to the client)")
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
