"""The GPU check of gpukb-dask (asv_bench/results-gpu/run_checks.sh runs it on a lent GPU machine):
CuPy chunks through the cuda backend on a dask-cuda cluster, the docs/dask.md example at a smaller
size, against one process. Needs a GPU, CuPy, dask, distributed and dask-cuda (without dask-cuda:
a plain LocalCluster of one worker process, and it says so). ``--numpy`` runs the same check on
NumPy chunks and the cpu backend (a smoke test for machines without a GPU).

    python plugins/gpukb-dask/gpu_check.py [--batch 65536 --blocks 4] [--numpy]

Prints, for one process and the cluster: seconds (best of 3 after a warm-up) and sequences per
second, the cluster's results persisted on its workers (what a pipeline that goes on with them
there pays; the first GPU run, 2026-12-04, shipped every output back to the client, 3.4 GB a
call, and ran out of its time); whether the final states, the last outputs and the first chunk's
outputs are bit for bit equal to one process's (a difference within float32 rounding is
reported, not an error) and that every result is of the chunks' array type. The inputs, the
initial states and the mask are persisted on the workers first (as NumPy companions they would
travel in every call's graph). Exit status 1 on a wrong result.
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
    parser.add_argument("--numpy", action="store_true",
                        help="NumPy chunks on the cpu backend: a smoke test without a GPU")
    args = parser.parse_args()

    import dask
    import dask.array as da
    import distributed

    import gpukb

    if args.numpy:
        xp = np
        to_device, synchronize = np.asarray, (lambda: None)
    else:
        import cupy as xp

        to_device, synchronize = xp.asarray, xp.cuda.runtime.deviceSynchronize

    B, T, D, H = args.batch, args.steps, 64, 128
    rng = np.random.default_rng(0)
    cell = gpukb.cells.lstm((rng.standard_normal((D, 4 * H)) / 8).astype(np.float32),
                            (rng.standard_normal((H, 4 * H)) / 16).astype(np.float32))
    x = rng.standard_normal((B, T, D)).astype(np.float32)
    h0 = (0.1 * rng.standard_normal((B, H))).astype(np.float32)
    mask = rng.random((B, T)) < 0.9

    x_dev, h_dev, mask_dev = to_device(x), to_device(h0), to_device(mask)
    expected = gpukb.rnn(cell, x_dev, [h_dev, h_dev], mask=mask_dev)
    one = _best(lambda: (gpukb.rnn(cell, x_dev, [h_dev, h_dev], mask=mask_dev), synchronize()))

    if args.numpy:
        cluster = distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                           silence_logs=logging.ERROR, dashboard_address=":0")
        kind = "distributed.LocalCluster, 1 worker process (--numpy)"
    else:
        try:
            from dask_cuda import LocalCUDACluster

            cluster = LocalCUDACluster(silence_logs=logging.ERROR, dashboard_address=":0")
            kind = f"dask_cuda.LocalCUDACluster ({len(cluster.workers)} worker(s), one per GPU)"
        except ImportError as error:
            cluster = distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                               silence_logs=logging.ERROR, dashboard_address=":0")
            kind = f"distributed.LocalCluster, 1 worker process (dask_cuda not importable: {error})"
    ok = True
    with cluster, distributed.Client(cluster) as client:
        chunk = -(-B // args.blocks)

        def on_workers(array, chunks):   # made on the client once, kept on the workers
            return da.from_array(array, chunks=chunks).map_blocks(to_device).persist()

        xd = on_workers(x, (chunk, T, D))
        hd = on_workers(h0, (chunk, H))
        md = on_workers(mask, (chunk, T))
        distributed.wait([xd, hd, md])

        def call():
            return gpukb.rnn(cell, xd, [hd, hd], mask=md)

        def persist_all():   # every result computed and kept on the workers
            last, outputs, states = call()
            distributed.wait(client.persist([last, outputs, *states]))

        result = call()
        metas = {type(a._meta).__name__ for a in (result[0], result[1], *result[2])}
        # What is compared comes back to the client: final states, last outputs, first chunk.
        got = dask.compute(result[0], result[2][0], result[2][1], result[1][:chunk])
        cluster_s = _best(persist_all)
    print(f"LSTM B={B} T={T} D={D} H={H} float32, random mask; {args.blocks} blocks; {kind}")
    print(f"results' meta: {sorted(metas)}; computed types: "
          f"{sorted({type(a).__name__ for a in got})}")
    for name, g, e in [("last_output", got[0], expected[0]), ("h", got[1], expected[2][0]),
                       ("c", got[2], expected[2][1]),
                       (f"outputs[:{chunk}]", got[3], expected[1][:chunk])]:
        same = bool(xp.array_equal(g, e))
        diff = float(xp.abs(g - e).max())
        close = bool(xp.allclose(g, e, rtol=1e-5, atol=1e-6))
        ok &= close and type(g) is type(x_dev)
        print(f"{name}: bit for bit {same}, max |diff| {diff:.3g}, within 1e-5: {close}")
    print(f"one process ({'cpu' if args.numpy else 'cuda'} backend): {one:.3f} s, "
          f"{B / one:,.0f} sequences/s")
    print(f"cluster: {cluster_s:.3f} s, {B / cluster_s:,.0f} sequences/s (inputs and results "
          "persisted on the workers)")
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
