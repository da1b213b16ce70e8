"""Throughput of gpukb.rnn on Dask: one process against LocalClusters of single-threaded workers.

    python plugins/gpukb-dask/bench_dask.py [--batch 4096 --steps 100 --features 64 --units 128]
                                            [--blocks 8] [--repeats 3]

LSTM, float32, a Dask input of ``--blocks`` batch chunks. Rows: gpukb.rnn on the whole NumPy batch
in this process (gpukb's own threads); the Dask graph on Dask's local threaded scheduler; on a
LocalCluster of 1 and of 2 worker processes with one thread each (gpukb's threads limited to one
there too, so a worker uses one core). Each is timed ``--repeats`` times after a warm-up (kernels
compiled, weights already on the workers); the best and the median are reported, in sequences per
second. The scheduling overhead per block is the time of a graph of blocks of one sample (one
time step each) divided by the number of blocks: what Dask adds to every task.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import time

import numpy as np


def _timed(fn, repeats):
    fn()  # warm-up: compile, ship the weights
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times), statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--features", type=int, default=64)
    parser.add_argument("--units", type=int, default=128)
    parser.add_argument("--blocks", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--overhead-blocks", type=int, default=200)
    args = parser.parse_args()

    import dask
    import dask.array as da
    from dask.distributed import Client, LocalCluster

    import gpukb

    rng = np.random.default_rng(0)
    B, T, D, H = args.batch, args.steps, args.features, args.units
    cell = gpukb.cells.lstm((rng.standard_normal((D, 4 * H)) / np.sqrt(D)).astype(np.float32),
                            (rng.standard_normal((H, 4 * H)) / np.sqrt(H)).astype(np.float32),
                            np.zeros(4 * H, np.float32))
    x = rng.standard_normal((B, T, D)).astype(np.float32)
    h0 = np.zeros((B, H), np.float32)
    xd = da.from_array(x, chunks=(-(-B // args.blocks), T, D)).persist()
    tiny = da.from_array(np.zeros((args.overhead_blocks, 1, D), np.float32), chunks=(1, 1, D)).persist()
    tiny_h = np.zeros((args.overhead_blocks, H), np.float32)

    rows = []
    best, median = _timed(lambda: gpukb.rnn(cell, x, [h0, h0]), args.repeats)
    rows.append(("one process, gpukb's threads (NumPy)", best, median, None))
    one = best
    with dask.config.set(scheduler="threads"):
        best, median = _timed(lambda: dask.compute(*gpukb.rnn(cell, xd, [h0, h0])), args.repeats)
        rows.append((f"Dask local threads, {args.blocks} blocks", best, median, None))

    for workers in (1, 2):
        env = {"NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
        with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0",
                          silence_logs=logging.ERROR, env=env) as cluster, Client(cluster) as client:
            xw = xd.persist()
            best, median = _timed(lambda: dask.compute(*gpukb.rnn(cell, xw, [h0, h0])), args.repeats)
            tw = tiny.persist()
            over_best, _ = _timed(lambda: dask.compute(*gpukb.rnn(cell, tw, [tiny_h, tiny_h])), args.repeats)
            rows.append((f"LocalCluster, {workers} worker(s) x 1 thread, {args.blocks} blocks", best, median,
                         over_best / args.overhead_blocks))

    print(f"LSTM B={B} T={T} D={D} H={H} float32; {platform.node() or 'this machine'}, "
          f"{os.cpu_count()} CPUs; best and median of {args.repeats}")
    print("| run | best s | median s | sequences/s (best) | vs one process | overhead per block |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, best, median, overhead in rows:
        per_block = "" if overhead is None else f"{overhead * 1e3:.1f} ms"
        print(f"| {name} | {best:.3f} | {median:.3f} | {B / best:,.0f} | {one / best:.2f}x | {per_block} |")


if __name__ == "__main__":
    main()
