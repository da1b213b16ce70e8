"""A spin barrier for the threads of one kernel call that split the units of every step.

When a call splits the recurrent GEMM by output units (see ``_common.unit_chunks``), each
thread computes its units' part of every step, and the next step needs every unit of the new
state: the threads meet once per step. A barrier through the operating system costs tens of
microseconds; this one spins on a shared counter (a cache line that the cores pass between
them), so a meeting costs well under a microsecond when every thread has its own core.

``sync`` is an int64 array (``SYNC_WORDS`` long): ``sync[0]`` counts arrivals over the whole
call (a thread's k-th meeting waits until it reaches k * threads; it is never reset, so no
meeting can be confused with the next), ``sync[1]`` is the stop flag (non-zero: a thread gave
up, e.g. Ctrl-C, and the others return instead of waiting for it). A waiting thread spins for
a few microseconds (``sync[11]`` pauses; ``sync[10]`` at the call's first meeting, where the
other threads are still starting), then sleeps on a Linux futex
(``sync[2]``: the generation that the last thread to arrive bumps, ``sync[3]``: how many
sleep) with a 1 ms timeout: when the machine is busy, or a hypervisor takes a core away, a
waiting thread gives its core to the thread it waits for instead of spinning against it.
Elsewhere than Linux it yields the core (sched_yield) instead of sleeping.
"""

import ctypes
import ctypes.util
import platform

from llvmlite import binding as llvm
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from ._numba_cache import cached_njit

_I64 = ir.IntType(64)
SPINS = 300            # pauses before sleeping (7 us on the 2-core EPYC, 23 ns a pause)
# ... at a call's first meeting, where the other threads are still starting (15-25 us after the
# calling thread there): the calling thread slept and paid a futex wake-up at every call. With
# 10,000 (230 us there) split calls took 0.84-0.92x their time (LSTM and GRU, B = 1-4, H =
# 128-512, in one process, medians of 9 rounds, 2026-12-04); a longer SPINS at the other
# meetings changed nothing (0.97-1.01x). Both are kept in the sync words (sync[10], sync[11]),
# read when the call runs, not compiled in.
FIRST_SPINS = 10_000
SYNC_WORDS = 16        # int64 words: 128 bytes, two cache lines of their own
_FUTEX_SYSCALL = {"x86_64": 202, "amd64": 202, "aarch64": 98, "arm64": 98}
_FUTEX_WAIT_PRIVATE, _FUTEX_WAKE_PRIVATE = 0 | 128, 1 | 128
_TIMEOUT_NS = 1_000_000


def _register(name, function_name):
    """Make a libc function callable from compiled code under a name of our own (resolved when
    the code is linked, so cached machine code finds it too)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None)
        address = ctypes.cast(getattr(libc, function_name), ctypes.c_void_p).value
    except (OSError, AttributeError):
        return False
    llvm.add_symbol(name, address)
    return True


_machine = platform.machine().lower()
HAS_FUTEX = (platform.system() == "Linux" and _machine in _FUTEX_SYSCALL
             and _register("gpukb_syscall", "syscall"))
HAS_YIELD = _register("gpukb_sched_yield", "sched_yield")


def new_sync():
    """The shared words of one call's meetings (zeros, plus the sleep's 1 ms timeout)."""
    import numpy as np

    sync = np.zeros(SYNC_WORDS, np.int64)
    sync[8], sync[9] = 0, _TIMEOUT_NS   # struct timespec {seconds, nanoseconds}
    sync[10], sync[11] = FIRST_SPINS, SPINS
    return sync


# The spin-wait hint as an LLVM intrinsic (Numba's JIT cannot assemble inline asm).
_PAUSE = {"x86_64": ("llvm.x86.sse2.pause", []), "amd64": ("llvm.x86.sse2.pause", []),
          "aarch64": ("llvm.aarch64.hint", [1]), "arm64": ("llvm.aarch64.hint", [1])}.get(
    platform.machine().lower())


@intrinsic
def _atomic_add(typingctx, address, value):
    """*address += value, atomically (sequentially consistent); returns the old value."""
    if not (isinstance(address, types.Integer) and isinstance(value, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        pointer = builder.inttoptr(args[0], _I64.as_pointer())
        return builder.atomic_rmw("add", pointer, builder.sext(args[1], _I64)
                                  if args[1].type.width < 64 else args[1], "seq_cst")

    return types.int64(address, value), codegen


@intrinsic
def _atomic_load(typingctx, address):
    """*address, read atomically with acquire ordering (never hoisted out of a loop)."""
    if not isinstance(address, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        pointer = builder.inttoptr(args[0], _I64.as_pointer())
        return builder.load_atomic(pointer, "acquire", 8)

    return types.int64(address), codegen


@intrinsic
def _relax(typingctx):
    """One spin-wait hint to the core (x86 ``pause``, ARM ``yield``; nothing elsewhere)."""

    def codegen(context, builder, sig, args):
        if _PAUSE:
            name, arguments = _PAUSE
            i32 = ir.IntType(32)
            function = builder.module.globals.get(name) or ir.Function(
                builder.module, ir.FunctionType(ir.VoidType(), [i32] * len(arguments)), name)
            builder.call(function, [ir.Constant(i32, a) for a in arguments])
        return context.get_dummy_value()

    return types.void(), codegen


@intrinsic
def _sched_yield(typingctx):
    def codegen(context, builder, sig, args):
        if HAS_YIELD:
            name = "gpukb_sched_yield"
            function = builder.module.globals.get(name) or ir.Function(
                builder.module, ir.FunctionType(ir.IntType(32), []), name)
            builder.call(function, [])
        return context.get_dummy_value()

    return types.void(), codegen


@intrinsic
def _futex(typingctx, address, operation, value, timeout):
    """syscall(SYS_futex, address, operation, value, timeout, 0, 0) on Linux (nothing elsewhere):
    FUTEX_WAIT sleeps while the 32-bit word at address holds value (until woken or timeout),
    FUTEX_WAKE wakes up to value sleepers."""
    if not all(isinstance(a, types.Integer) for a in (address, operation, value, timeout)):
        return None

    def codegen(context, builder, sig, args):
        if HAS_FUTEX:
            name = "gpukb_syscall"
            function = builder.module.globals.get(name) or ir.Function(
                builder.module, ir.FunctionType(_I64, [_I64], var_arg=True), name)
            i32 = ir.IntType(32)
            widen = [builder.sext(a, _I64) if a.type.width < 64 else a for a in args]
            builder.call(function, [ir.Constant(_I64, _FUTEX_SYSCALL[_machine]), widen[0],
                                    builder.trunc(widen[1], i32), builder.trunc(widen[2], i32),
                                    widen[3], ir.Constant(_I64, 0), ir.Constant(i32, 0)])
        return context.get_dummy_value()

    return types.void(address, operation, value, timeout), codegen


@cached_njit(error_model="numpy", inline="always")
def meet(sync, threads, meeting):
    """Arrive at the ``meeting``-th barrier (1, 2, ...) of ``threads`` threads and wait for the
    others; False when another thread gave up (then return without finishing the call)."""
    if threads <= 1:
        return True
    count = sync.ctypes.data
    stop, generation, sleepers, timeout = count + 8, count + 16, count + 24, count + 64
    target = meeting * threads
    if _atomic_add(count, 1) + 1 == target:   # the last to arrive: wake the sleepers
        _atomic_add(generation, 1)
        if _atomic_load(sleepers) > 0:
            _futex(generation, _FUTEX_WAKE_PRIVATE, 1 << 30, 0)
        return True
    spins = 0
    limit = sync[10] if meeting == 1 else sync[11]
    while _atomic_load(count) < target:
        if _atomic_load(stop) != 0:
            return False
        spins += 1
        if spins < limit:
            _relax()
            continue
        if not HAS_FUTEX:
            _sched_yield()
            continue
        seen = _atomic_load(generation)
        _atomic_add(sleepers, 1)
        if _atomic_load(count) < target:   # the last arriver bumps generation after count
            _futex(generation, _FUTEX_WAIT_PRIVATE, seen & 0xFFFFFFFF, timeout)
        _atomic_add(sleepers, -1)
    return True
