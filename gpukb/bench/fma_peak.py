"""The machine's multiply-add peak: what no kernel on these cores can exceed.

``fma_gflops(dtype, threads)`` runs, on each of ``threads`` threads at once, a compiled loop of
independent vector multiply-adds on registers only (``ACCUMULATORS`` accumulators of the widest
vector the kernels use, ``gpukb.kernels.cpu._gemm.VECTOR_BYTES``: enough chains in flight to
cover the latency of two FMA pipes), with no load or store in the loop, and counts 2 flops per
lane per multiply-add. NumPy's matrix product, the GEMM peak of ``gpukb bench --grid``, is
one library's kernel (on the AMD EPYC it is OpenBLAS's AVX2 kernel: about half of this).

    python -m gpukb.bench.fma_peak [--threads N] [--seconds S]
"""

from __future__ import annotations

import argparse
import sys
import threading
import time

#: Independent accumulators per loop iteration (FMA latency 4 cycles x 2 pipes needs 8).
ACCUMULATORS = 12
#: Multiply-adds per accumulator per call: long enough (~10 ms) to hide the threads' start.
ITERATIONS = 1_000_000

_loops: dict = {}


def _loop(dtype: str):
    """The compiled loop for ``dtype``: ``loop(iterations, b, c) -> sum of every accumulator's
    lanes``, each accumulator ``a <- a * b + c`` per iteration from ``a = its index``."""
    if dtype in _loops:
        return _loops[dtype]
    from llvmlite import ir
    from numba import njit, types
    from numba.core import cgutils
    from numba.extending import intrinsic

    from ..kernels.cpu._gemm import VECTOR_BYTES
    from ..kernels.cpu._llvm_loop import carried_loop

    scalar = {"float32": types.float32, "float64": types.float64}[dtype]
    lanes = VECTOR_BYTES // (4 if dtype == "float32" else 8)

    @intrinsic
    def multiply_adds(typingctx, iterations, b, c):
        def codegen(context, builder, sig, args):
            n, b_, c_ = args
            fty = b_.type
            vty = ir.VectorType(fty, lanes)
            fma = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(vty, [vty, vty, vty]),
                f"llvm.fmuladd.v{lanes}f{32 if dtype == 'float32' else 64}")

            def splat(value):
                v = ir.Constant(vty, ir.Undefined)
                for lane in range(lanes):
                    v = builder.insert_element(v, value, ir.Constant(ir.IntType(32), lane))
                return v

            bv, cv = splat(b_), splat(c_)
            start = [ir.Constant(vty, [float(i)] * lanes) for i in range(ACCUMULATORS)]
            outs = carried_loop(builder, n, start,
                                lambda k, phis: [builder.call(fma, [p, bv, cv]) for p in phis],
                                "fma")
            total = ir.Constant(fty, 0.0)
            for out in outs:
                for lane in range(lanes):
                    total = builder.fadd(total, builder.extract_element(
                        out, ir.Constant(ir.IntType(32), lane)))
            return total

        return scalar(types.int64, scalar, scalar), codegen

    @njit(nogil=True)
    def loop(iterations, b, c):
        return multiply_adds(iterations, b, c)

    _loops[dtype] = (loop, lanes)
    return _loops[dtype]


def lanes(dtype: str) -> int:
    """Lanes of the loop's vectors in ``dtype``."""
    return _loop(dtype)[1]


def run_loop(dtype: str, iterations: int, b: float, c: float) -> float:
    """One call of the loop (see _loop): the sum of every accumulator's lanes."""
    import numpy as np

    loop, _ = _loop(dtype)
    scalar = np.dtype(dtype).type
    return float(loop(iterations, scalar(b), scalar(c)))


def fma_gflops(dtype: str = "float32", threads: int | None = None, seconds: float = 1.0) -> float:
    """The best GFLOP/s of ``threads`` threads (default: the kernels' threads) each running the
    loop at the same time, over rounds for about ``seconds``."""
    from ..kernels.cpu import _common

    threads = _common.max_threads() if threads is None else threads
    if threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    run_loop(dtype, 10, 1.0, 1.0)   # compile first
    best, deadline = float("inf"), time.perf_counter() + seconds
    while True:
        gate = threading.Barrier(threads + 1)

        def one():
            gate.wait()
            run_loop(dtype, ITERATIONS, 1.0, 1e-7)

        workers = [threading.Thread(target=one) for _ in range(threads)]
        for w in workers:
            w.start()
        gate.wait()
        t0 = time.perf_counter()
        for w in workers:
            w.join()
        best = min(best, time.perf_counter() - t0)
        if time.perf_counter() >= deadline:
            break
    return threads * ITERATIONS * ACCUMULATORS * lanes(dtype) * 2 / best / 1e9


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gpukb.bench.fma_peak",
                                     description="The machine's multiply-add peak (GFLOP/s).")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads at once (default: the kernels' threads)")
    parser.add_argument("--seconds", type=float, default=1.0, help="time per dtype")
    args = parser.parse_args(argv)
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be at least 1, got {args.threads}")
    if args.seconds <= 0:
        parser.error(f"--seconds must be positive, got {args.seconds}")
    for dtype in ("float32", "float64"):
        peak = fma_gflops(dtype, args.threads, args.seconds)
        print(f"{dtype}: {peak:.0f} GFLOP/s ({ACCUMULATORS} x {lanes(dtype)}-lane multiply-adds "
              "per iteration, registers only)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
