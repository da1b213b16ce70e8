"""Run a simulated CUDA kernel with ALL its blocks at once, so that a grid sync really syncs.

Numba's CUDA simulator runs the blocks of a launch one after another and treats
``cuda.cg.this_grid().sync()`` as a block barrier, so a kernel whose blocks exchange data through
global memory between grid syncs (the multi-block persistent kernel) computes garbage there. This
runner starts one Python thread per CUDA thread of every block, gives each block its own dynamic
shared memory, and implements ``syncthreads`` as a barrier of the block's threads and the grid sync
as a barrier of all threads. Arrays are passed to the kernel as the NumPy arrays themselves (written
in place).

It uses the simulator's kernel context and module swapping (``numba.cuda.simulator``), so it only
works under ``NUMBA_ENABLE_CUDASIM=1``; tiny launches only (a thread per CUDA thread).
"""

from __future__ import annotations

import threading
import time

import numpy as np
from numba.cuda.simulator import kernel as sim_kernel
from numba.cuda.simulator import kernelapi
from numba.np import numpy_support
from numba.core import types

TIMEOUT_S = 60


class _CudaThread(threading.Thread):
    """One CUDA thread: the simulator's module reads ``threadIdx``/``blockIdx`` off the thread."""

    def __init__(self, run, block, thread):
        super().__init__(daemon=True)
        self._run = run
        self.blockIdx = kernelapi.Dim3(block, 0, 0)
        self.threadIdx = kernelapi.Dim3(thread, 0, 0)
        self.thread_id = thread
        self.error = None

    def run(self):
        try:
            self._run()
        except BaseException as error:  # noqa: BLE001 - reported by the runner
            self.error = error


class _PerBlockShared:
    """``cuda.shared``: each block its own dynamic shared memory (static arrays are not used)."""

    def __init__(self, blocks, nbytes):
        self._buffers = [np.zeros(nbytes, dtype=np.byte) for _ in range(blocks)]

    def array(self, shape, dtype, alignment=None):
        if shape != 0:
            raise NotImplementedError("grid_sync runner: only dynamic shared memory (shape 0)")
        if isinstance(dtype, types.Type):
            dtype = numpy_support.as_dtype(dtype)
        buffer = self._buffers[threading.current_thread().blockIdx.x]
        return np.frombuffer(buffer.data, dtype=dtype, count=buffer.size // np.dtype(dtype).itemsize)


class _Grid:
    def __init__(self, barrier):
        self._barrier = barrier

    def sync(self):
        self._barrier.wait(TIMEOUT_S)


class _Cg:
    def __init__(self, barrier):
        self._grid = _Grid(barrier)

    def this_grid(self):
        return self._grid


class _GridModule(kernelapi.FakeCUDAModule):
    def __init__(self, blocks, threads, shared_bytes):
        super().__init__((blocks, 1, 1), (threads, 1, 1), shared_bytes)
        self._block_barriers = [threading.Barrier(threads) for _ in range(blocks)]
        self._grid_barrier = threading.Barrier(blocks * threads)
        self._shared = _PerBlockShared(blocks, shared_bytes)
        self._cg = _Cg(self._grid_barrier)

    def syncthreads(self):
        self._block_barriers[threading.current_thread().blockIdx.x].wait(TIMEOUT_S)

    def abort(self):
        for barrier in [self._grid_barrier, *self._block_barriers]:
            barrier.abort()


def launch_cooperative(kernel, blocks, threads, *args, shared_bytes=0):
    """Run the simulated ``kernel`` (a ``cuda.jit`` kernel) over ``blocks`` x ``threads``, all blocks
    concurrently; raises the first error any CUDA thread raised."""
    module = _GridModule(blocks, threads, shared_bytes)
    fn = kernel.py_func

    with sim_kernel._push_kernel_context(module), kernelapi.swapped_cuda_module(fn, module):
        workers = [_CudaThread(lambda: fn(*args), b, t) for b in range(blocks) for t in range(threads)]
        for worker in workers:
            worker.start()
        deadline = time.monotonic() + 2 * TIMEOUT_S
        while True:
            alive = [w for w in workers if w.is_alive()]
            if any(w.error is not None for w in workers):
                module.abort()  # release the threads waiting at a barrier
            if not alive:
                break
            if time.monotonic() > deadline:
                module.abort()
                raise TimeoutError("grid_sync runner: a CUDA thread did not finish (deadlock?)")
            alive[0].join(0.01)
    errors = [w.error for w in workers if w.error is not None
              and not isinstance(w.error, threading.BrokenBarrierError)]
    if errors:
        raise errors[0]
    if any(w.error is not None for w in workers):
        raise RuntimeError("grid_sync runner: a barrier was broken")
