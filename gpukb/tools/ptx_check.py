"""Compile every CUDA kernel of the cuda backend to PTX for a real GPU, without a GPU.

The CUDA simulator runs the kernels as Python, so it cannot catch what only Numba's CUDA compiler
sees: a value typed float64 inside a float32 kernel, an unsupported function, a cast Numba cannot
lower for some leaf dtype. This module drives the real fused paths on small NumPy problems with a
launcher that, instead of launching, compiles each kernel for the argument types it would get
(``numba.cuda.compile_ptx``, NVVM only: no driver, no device) and records the launch shape; the
backward kernels of ``rnn_vjp`` (``gpukb.kernels.cuda.backward``) through the cuda backend's fused
vjp the same way (per step, and the persistent backward with the forward's tilings).

    python -m gpukb.tools.ptx_check [--cc 9.0] [--no-link] [--json FILE]

Needs numba-cuda with NVIDIA's CUDA 13 wheels (libNVVM, NVRTC, nvJitLink, the device runtime; the
``ptx-check`` extra), no driver. Each kernel is then also linked into a cubin with nvJitLink, as
numba-cuda does at its first launch (the grid-sync kernels against libcudadevrt), its registers and
spills are read off the linker's report, and every recorded launch is checked against them: a
block with more threads than the register file holds fails to launch on a GPU.

Reports as problems (exit status 1): double-precision instructions in a float32 kernel, launches
the registers or the default shared-memory limit do not allow, register spills. Exit status 3:
CUDA code cannot be compiled here.

Must run in a process where Numba is NOT the CUDA simulator.
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from gpukb.kernels.cuda import _runtime

H100_SMS = 132
REGISTERS_PER_SM = 65536  # every GPU from compute capability 5.0 to 10.x
MAX_THREADS_PER_BLOCK = 1024


@dataclass
class Compiled:
    kernel: str
    signature: str
    dtype: str  # the float dtype of the first array argument ("" for the masking kernel)
    launches: set = field(default_factory=set)  # (blocks, threads, shared bytes)
    ptx_bytes: int = 0
    double_instructions: int = 0  # .f64 operations in the PTX
    registers: int | None = None
    spill_stores: int | None = None
    static_shared: int | None = None
    ptx: str = field(default="", repr=False)

    def max_threads(self) -> int | None:
        """Most threads per block the register file allows (registers are given per warp, in
        units of 256), or None before ``link``."""
        if self.registers is None:
            return None
        per_warp = -(-max(self.registers, 1) * 32 // 256) * 256
        return min(MAX_THREADS_PER_BLOCK, REGISTERS_PER_SM // per_warp * 32)

    def problems(self) -> list[str]:
        """What would go wrong on a GPU; empty when nothing does."""
        found = []
        if self.dtype == "float32" and self.double_instructions:
            found.append(f"{self.double_instructions} double-precision instructions in a float32 kernel")
        limit = self.max_threads() or MAX_THREADS_PER_BLOCK
        for blocks, threads, shared in sorted(self.launches):
            if threads > limit:
                found.append(f"launch of {threads} threads per block; the registers allow {limit}")
            if shared > 48 * 1024:
                found.append(f"launch with {shared} bytes of dynamic shared memory (> 48 KiB needs an opt-in)")
        if self.spill_stores:
            found.append(f"{self.spill_stores} bytes of register spills")
        return found

    def as_dict(self):
        data = asdict(self)
        data["launches"] = sorted(self.launches)
        del data["ptx"]
        return data


class CompilingLauncher(_runtime.Launcher):
    """A ``Launcher`` that compiles instead of launching (arrays stay NumPy arrays)."""

    def __init__(self, xp=np, *, cc=(9, 0), results=None):
        self.sim = False
        self.xp = np
        self.stream = 0
        self.cc = cc
        self.results = {} if results is None else results

    def view(self, array):
        return array

    def configure(self, kernel, blocks, threads, shared_bytes=0):
        if blocks <= 0:
            return None

        def compile_for(*args):
            self._compile(kernel, args, (blocks, threads, shared_bytes))

        return compile_for

    def _compile(self, kernel, args, launch):
        import numba
        from numba import cuda

        signature = tuple(numba.typeof(a) for a in args)
        key = (id(kernel.py_func), signature)
        entry = self.results.get(key)
        if entry is None:
            ptx, _ = cuda.compile_ptx(kernel.py_func, signature, cc=self.cc)
            first = next((a for a in args if isinstance(a, np.ndarray) and a.dtype.kind == "f"), None)
            dtype = str(first.dtype) if kernel.py_func.__name__ != "masked_step" and first is not None else ""
            entry = self.results[key] = Compiled(kernel.py_func.__name__, str(signature), dtype)
            entry.ptx_bytes = len(ptx)
            entry.double_instructions = len(_DOUBLE_OP.findall(ptx))
            entry.ptx = ptx
        entry.launches.add(launch)


class _TargetDevice:
    def __init__(self, cc):
        self.compute_capability = cc


def _cell_cases():
    """(cell-or-step, x, states, options) covering every kernel, dtype and flag the paths take."""
    import gpukb

    rng = np.random.default_rng(0)
    for dtype, kind in itertools.product((np.float32, np.float64), ("lstm", "gru", "gru_before", "simple_rnn")):
        B, T, D, H = 3, 4, 5, 6
        gates = {"lstm": 4, "gru": 3, "gru_before": 3, "simple_rnn": 1}[kind]
        W = rng.standard_normal((D, gates * H)).astype(dtype)
        U = rng.standard_normal((H, gates * H)).astype(dtype)
        bias = rng.standard_normal((2, 3 * H) if kind == "gru" else (gates * H,)).astype(dtype)
        if kind == "lstm":
            cell = gpukb.cells.lstm(W, U, bias)
        elif kind == "simple_rnn":
            cell = gpukb.cells.simple_rnn(W, U, bias)
        else:
            cell = gpukb.cells.gru(W, U, bias, kind == "gru")
        for time_major, masked in itertools.product((False, True), (False, True)):
            x = rng.standard_normal((T, B, D) if time_major else (B, T, D)).astype(dtype)
            states = [rng.standard_normal((B, H)).astype(dtype) for _ in cell.state_size]
            options = dict(time_major=time_major)
            if masked:
                valid = rng.random((B, T)) < 0.6
                options["mask"] = valid.T if time_major else valid
            yield cell, x, states, options


def _planner_cases():
    """Cells at sizes where the automatic size rule picks its widest blocks (B = 8, one block of
    all H units, or many blocks with a grid sync), so their launch shapes are checked too."""
    import gpukb

    rng = np.random.default_rng(1)
    for dtype, kind, H in itertools.product((np.float32, np.float64), ("lstm", "gru", "simple_rnn"),
                                            (24, 48, 100, 256)):
        B, T, D = 8, 2, 2
        gates = {"lstm": 4, "gru": 3, "simple_rnn": 1}[kind]
        W = rng.standard_normal((D, gates * H)).astype(dtype)
        U = rng.standard_normal((H, gates * H)).astype(dtype)
        cell = {"lstm": gpukb.cells.lstm, "gru": gpukb.cells.gru, "simple_rnn": gpukb.cells.simple_rnn}[kind](W, U)
        x = rng.standard_normal((B, T, D)).astype(dtype)
        yield cell, x, [np.zeros((B, H), dtype) for _ in cell.state_size], {}


def _leaf_dtypes():
    return [np.float32, np.float64, np.float16, np.int8, np.int16, np.int32, np.int64, np.uint8,
            np.uint64, np.bool_, np.complex64, np.complex128]


def _generic_step(dtypes, batch):
    def step(x, states):
        out = [np.ones((batch, 2), dtype=d) for d in dtypes]
        return out, [s for s in states]

    return step


def _run_backward(call, tiling=None):
    """The fused vjp of ``call``: its forward, then its backward, per step or (``tiling``, a
    ``persistent.Plan``) on the persistent kernels (arrays left unwritten by the compiling
    launcher hold garbage: nothing is checked but the kernels)."""
    from gpukb.backends import _cuda_vjp

    result, backward = _cuda_vjp.fused_cell_vjp(call, tiling)
    with np.errstate(all="ignore"):
        backward([np.zeros_like(result[1])], [np.zeros_like(result[0])],
                 [np.zeros_like(s) for s in call.state_leaves])


def run(cc=(9, 0), sm_count=H100_SMS):
    """Compile every kernel; returns the ``Compiled`` records."""
    from gpukb import _rnn

    from gpukb.backends import _cuda_cells as cells
    from gpukb.backends import _cuda_generic as generic
    from gpukb.kernels.cuda import persistent

    if _runtime.simulator_enabled():
        raise RuntimeError("ptx_check needs the real numba.cuda: unset NUMBA_ENABLE_CUDASIM")
    import numba.cuda.dispatcher as numba_dispatcher

    results = {}
    launcher_cls = _runtime.Launcher
    sm_count_fn = _runtime.sm_count
    current_device_fn = numba_dispatcher.get_current_device
    _runtime.Launcher = lambda xp: CompilingLauncher(xp, cc=cc, results=results)
    _runtime.sm_count = lambda: sm_count
    # Device functions called from a kernel are compiled for the current device's compute
    # capability, which needs a driver; give them the target's instead.
    numba_dispatcher.get_current_device = lambda: _TargetDevice(cc)
    try:
        for cell, x, states, options in _cell_cases():
            B, H = states[0].shape
            kind = cell.kernel_layout.kind
            tilings = [dict(), dict(unit_tile=H, coop=True), dict(unit_tile=2, coop=True)]
            for path, plan_options in [("step", {})] + [("persistent", t) for t in tilings]:
                call = _rnn.prepare(cell, x, [s.copy() for s in states], xp=np, **options)
                cells.run_cell(call, cell, path=path, plan_options=plan_options)
                if path == "persistent":
                    chosen = cells.last_path()
                    assert isinstance(chosen, persistent.Plan), (kind, plan_options, chosen)
        for cell, x, states, options in _planner_cases():
            cells.run_cell(_rnn.prepare(cell, x, states, xp=np, **options), cell, path="auto")
        # The backward kernels (rnn_vjp), per step and persistent (the forward's tilings: one
        # block of all units, the grid-sync variants); the planner's sizes record launches of
        # whole blocks.
        for cell, x, states, options in _cell_cases():
            if options.get("time_major"):   # they take (T, B, ...) copies either way
                continue
            B, H = states[0].shape
            kind = cell.kernel_layout.kind
            tilings = [None] + [persistent.plan(B, H, kind, x.dtype.itemsize, max_batch=B, **t)
                                for t in (dict(), dict(unit_tile=H, coop=True),
                                          dict(unit_tile=2, coop=True))]
            for tiling in tilings:
                _run_backward(_rnn.prepare(cell, x, [s.copy() for s in states], xp=np, **options),
                              tiling)
        for cell, x, states, options in _planner_cases():
            call = _rnn.prepare(cell, x, states, xp=np, **options)
            _run_backward(call, None)
            _run_backward(call, cells.choose(call, "auto").tiling)
        # The generic masking kernel: one launch per leaf dtype, then all of them (several launches).
        dtypes = _leaf_dtypes()
        batch, steps = 3, 2
        x = np.ones((batch, steps, 1), np.float32)
        mask = np.array([[True, False]] * batch)
        for group in [[d] for d in dtypes] + [dtypes]:
            initial = [np.zeros((batch, 2), dtype=d) for d in group]
            for zero_out in (False, True):
                call = _rnn.prepare(_generic_step(group, batch), x, initial, mask=mask, xp=np,
                                    zero_output_for_mask=zero_out)
                generic.run_masked(call, CompilingLauncher(np, cc=cc, results=results))
    finally:
        _runtime.Launcher = launcher_cls
        _runtime.sm_count = sm_count_fn
        numba_dispatcher.get_current_device = current_device_fn
    return list(results.values())


_DOUBLE_OP = re.compile(r"^\s*[a-z][a-z0-9.]*\.f64\b", re.MULTILINE)
_ENTRY = re.compile(r"\.entry\s+([\w$]+)")


def _devrt_library() -> str | None:
    """libcudadevrt.a of NVIDIA's ``nvidia-cuda-runtime`` wheel: what grid sync links against."""
    try:
        import nvidia
    except ImportError:
        return None
    for root in getattr(nvidia, "__path__", []):
        for candidate in sorted(Path(root).glob("cu*/lib/libcudadevrt.a"), reverse=True):
            return str(candidate)
    return None


def linker_problem() -> str | None:
    """None when nvJitLink (and libcudadevrt, for the grid-sync kernels) can be used here."""
    try:
        from cuda.bindings import nvjitlink

        nvjitlink.destroy(nvjitlink.create(1, ["-arch=sm_90"]))
    except Exception as error:  # noqa: BLE001 - any failure means "cannot link here"
        return f"nvJitLink unusable: {type(error).__name__}: {str(error).strip()[:200]}"
    if _devrt_library() is None:
        return "libcudadevrt.a not found (nvidia-cuda-runtime wheel)"
    return None


def link(records, cc):
    """Link each kernel's PTX into a cubin with nvJitLink, as numba-cuda does at first launch (the
    grid-sync kernels with libcudadevrt), and fill registers, spills and static shared memory from
    the linker's report."""
    from cuda.bindings import nvjitlink

    devrt = _devrt_library()
    for record in records:
        ptx = record.ptx.encode()
        entry = _ENTRY.search(record.ptx).group(1)
        handle = nvjitlink.create(2, [f"-arch=sm_{cc[0]}{cc[1]}", "-verbose"])
        try:
            nvjitlink.add_data(handle, nvjitlink.InputType.PTX, ptx, len(ptx), f"{record.kernel}.ptx")
            if "cudaCGGetIntrinsicHandle" in record.ptx:  # grid sync: needs the device runtime
                nvjitlink.add_file(handle, nvjitlink.InputType.LIBRARY, devrt)
            try:
                nvjitlink.complete(handle)
            except Exception as error:
                raise RuntimeError(f"linking {record.kernel} {record.signature} failed: "
                                   f"{_log(nvjitlink, handle, error=True)}") from error
            text = _log(nvjitlink, handle)
        finally:
            nvjitlink.destroy(handle)
        spills = re.search(re.escape(entry) + r"\s*\n.*?(\d+) bytes spill stores", text)
        used = re.search(r"Function properties for '" + re.escape(entry) + r"':\s*\n.*?used (\d+) registers"
                         r".*?(\d+) bytes smem", text)
        if used is None:
            raise RuntimeError(f"no resource report for {record.kernel} in the linker's log")
        record.registers = int(used.group(1))
        record.static_shared = int(used.group(2))
        record.spill_stores = int(spills.group(1)) if spills else 0


def _log(nvjitlink, handle, error=False):
    size = (nvjitlink.get_error_log_size if error else nvjitlink.get_info_log_size)(handle)
    buffer = bytearray(size)
    (nvjitlink.get_error_log if error else nvjitlink.get_info_log)(handle, buffer)
    return bytes(buffer).decode(errors="replace")


NO_COMPILER = 3  # exit status when Numba cannot compile CUDA code here (no libNVVM / NVRTC)


def compiler_problem(cc=(9, 0)) -> str | None:
    """None when ``numba.cuda.compile_ptx`` works here, else why not."""
    try:
        from numba import cuda, float32

        def probe(a):
            a[0] = float32(1.0)

        cuda.compile_ptx(probe, (float32[:],), cc=cc)
    except Exception as error:  # noqa: BLE001 - any failure means "cannot compile here"
        first = (str(error).strip().splitlines() or [""])[0]
        return f"{type(error).__name__}: {first}"
    return None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gpukb.tools.ptx_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cc", default="9.0", help="compute capability to compile for (default 9.0, H100)")
    parser.add_argument("--no-link", action="store_true",
                        help="only compile to PTX (skip nvJitLink, registers and launch checks)")
    parser.add_argument("--json", help="write the records to this file")
    args = parser.parse_args(argv)
    cc = tuple(int(p) for p in args.cc.split("."))
    problem = compiler_problem(cc)
    if problem is not None:
        print(f"cannot compile CUDA kernels here ({problem}); pip install 'gpukb[ptx-check]'")
        return NO_COMPILER
    records = run(cc=cc)
    link_problem = None if args.no_link else linker_problem()
    if args.no_link or link_problem:
        print(f"not linked ({link_problem or '--no-link'}): registers and launch shapes not checked")
    else:
        link(records, cc)
    problems = 0
    for r in records:
        extra = "" if r.registers is None else f"  regs={r.registers} spills={r.spill_stores} smem={r.static_shared}"
        print(f"{r.kernel:12s} {r.dtype or '-':8s} {len(r.launches):2d} launch shapes  ptx={r.ptx_bytes:7d} B{extra}")
        for problem in r.problems():
            problems += 1
            print(f"  PROBLEM: {problem}\n  in {r.signature}")
    print(f"{len(records)} kernel specialisations compiled for sm_{cc[0]}{cc[1]}; {problems} problems")
    if args.json:
        Path(args.json).write_text(json.dumps(
            [dict(r.as_dict(), problems=r.problems()) for r in records], indent=1))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
