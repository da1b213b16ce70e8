"""The ``cuda`` backend: CuPy arrays on NVIDIA GPUs, fused Numba CUDA kernels.

``is_available`` asks the CUDA driver directly through ctypes, so that checking never imports
CuPy or numba.cuda (both are slow to import and may fail without a GPU).

For each validated call it plans one of three paths (``plan``, logged on the ``gpukb`` logger at
DEBUG; see ``gpukb._plan``), then runs it (``run_plan``); the kernels are ``gpukb.kernels.cuda``:
- ``persistent``: a Keras cell (``gpukb.cells``, float32/float64) whose arrays fit (see
  ``gpukb._fused``), with a small batch: the input projection as one cuBLAS GEMM, then one launch
  of the persistent kernel for the whole sequence (``_cuda_cells``; the plan carries its tiling);
- ``per_step``: such a cell with a batch too large for it: the projection GEMM, then per step a
  cuBLAS GEMM + one fused kernel;
- ``generic``: any other call: the shared generic loop, with ONE masking kernel per step
  (``_cuda_generic``) when the call has a mask; the plan says why.
Everything is queued on CuPy's current stream; the time loop never waits for the GPU.
``rnn_vjp`` (``plan_vjp``): a cell the forward fuses runs that forward with every output kept,
then the fused backward (``_cuda_vjp``), its reverse loop in one launch of the persistent backward
kernel (path ``persistent``, the forward's tiling) when the forward is persistent, else per step
(``per_step``: one fused kernel and one cuBLAS GEMM per step); any other call the generic path.

Options (environment variables read when the backend is created; attributes of the instance,
``gpukb.get_backend("cuda", check_available=False)``, that can be read and set at any time, with or
without a GPU; a bad value set is a TypeError/ValueError naming the option, a bad variable warns
and leaves the default):
- ``GPUKB_CUDA_TF32=1`` / ``allow_tf32 = True``: let the float32 GEMMs of the fused cell path use
  TF32 tensor cores (about 10 mantissa bits). Off by default: gpukb's GEMMs run in full FP32 even
  when CuPy's own default is TF32 (``CUPY_TF32=1``).
- ``GPUKB_CUDA_CELL_PATH`` / ``cell_path``: ``auto`` (default: persistent kernel where the size
  rule picks it, else per step), ``step``, ``persistent``, or ``generic`` (no fused cell kernels).

Under Numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``, set before Numba is first imported) the
backend runs the same kernels on NumPy arrays, so CI can test every kernel without a GPU; it then
also accepts ``numpy:ndarray``, with a lower priority than ``cpu`` (select it by name).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import importlib.metadata
import importlib.util
import itertools
import os
import sys

import numpy

from .._backend import Backend, available, unavailable
from .._plan import GENERIC, PER_STEP, PERSISTENT, Plan
from .._warn import warn_user

INSTALL_HINT = (
    "It needs an NVIDIA GPU and driver, then the CUDA extra that matches the driver: "
    "pip install 'gpukb[cuda12]' (CUDA 12) or pip install 'gpukb[cuda13]' (CUDA 13); from a clone "
    "of gpukb, pip install '.[cuda12]' or '.[cuda13]'."
)

CELL_PATHS = ("auto", "step", "persistent", "generic")
_FUSED_VJP_PATHS = (PER_STEP, PERSISTENT)   # rnn_vjp's fused cell paths (plan_vjp)

# Array types whose objects the backend views as CuPy arrays without a copy (besides CuPy's own):
# Numba device arrays (CUDA Array Interface). Other CAI/DLPack GPU arrays work with backend="cuda".
_VIEWED_TYPES = ("numba.cuda.cudadrv.devicearray:DeviceNDArray",)


def _driver_names() -> list:
    """The names to load the driver by. On Linux, ctypes.util.find_library would only find a
    soname that the dynamic loader's own search (``libcuda.so.1``) already covers, after running
    ldconfig and a compiler: 0.1 s of every CPU-only process's first gpukb.rnn call."""
    if sys.platform.startswith("linux"):
        return ["libcuda.so.1", "libcuda.so"]
    return ["libcuda.so.1", "libcuda.so", ctypes.util.find_library("cuda"), "nvcuda.dll"]


def _cuda_driver_problem() -> str | None:
    """None when the driver loads and sees at least one device, else the reason."""
    driver = None
    for name in filter(None, _driver_names()):
        try:
            driver = ctypes.CDLL(name)
            break
        except OSError:
            continue
    if driver is None:
        return "no CUDA driver found (libcuda could not be loaded)"
    status = driver.cuInit(0)
    if status != 0:
        return f"the CUDA driver failed to initialise (cuInit returned error {status})"
    count = ctypes.c_int(0)
    status = driver.cuDeviceGetCount(ctypes.byref(count))
    if status != 0:
        return f"the CUDA driver could not count devices (error {status})"
    if count.value == 0:
        return "no CUDA device found"
    return None


# The newest numba-cuda known not to compile with NumPy 2.5: it registers an overload for
# np.row_stack, which NumPy 2.5 removed, when it compiles its first kernel (AttributeError from
# deep inside; seen with numba-cuda 0.30.4 and NumPy 2.5.2 on an H200, 2026-12-04).
_NUMBA_CUDA_WITHOUT_NUMPY_2_5 = (0, 30, 4)


def _release(version: str) -> tuple:
    """'0.30.4' -> (0, 30, 4); the leading numbers of each part only ('1rc1' -> 1)."""
    numbers = []
    for part in version.split(".")[:3]:
        digits = "".join(itertools.takewhile(str.isdigit, part))
        numbers.append(int(digits or 0))
    return tuple(numbers)


def _numpy_problem(numpy_module, numba_cuda_version: str) -> str | None:
    """None when numba-cuda can compile with this NumPy, else the reason and the fix."""
    if hasattr(numpy_module, "row_stack"):
        return None
    if _release(numba_cuda_version) > _NUMBA_CUDA_WITHOUT_NUMPY_2_5:
        return None
    return (f"numba-cuda {numba_cuda_version} cannot compile kernels with NumPy "
            f"{numpy_module.__version__} (it uses np.row_stack, which NumPy 2.5 removed): "
            "pip install 'numpy<2.5', or a numba-cuda release that supports your NumPy")


def _simulated() -> bool:
    from gpukb.kernels.cuda._runtime import simulator_enabled

    return simulator_enabled()


def checked_cell_path(value) -> str:
    """``value`` as one of CELL_PATHS (case and surrounding spaces ignored), else the error."""
    if not isinstance(value, str):
        raise TypeError(f"cuda backend: cell_path must be a str, one of {CELL_PATHS}, "
                        f"got {type(value).__name__} {value!r}.")
    path = value.strip().lower()
    if path not in CELL_PATHS:
        raise ValueError(f"cuda backend: cell_path must be one of {CELL_PATHS}, got {value!r}.")
    return path


def checked_allow_tf32(value) -> bool:
    if not isinstance(value, (bool, numpy.bool_)):
        raise TypeError(f"cuda backend: allow_tf32 must be True or False, "
                        f"got {type(value).__name__} {value!r}.")
    return bool(value)


def _tf32_from_environment() -> bool:
    raw = os.environ.get("GPUKB_CUDA_TF32", "").strip().lower()
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw not in ("", "0", "false", "no", "off"):
        warn_user(f"gpukb: environment variable GPUKB_CUDA_TF32 ignored: expected 1, true, yes, on "
                  f"or 0, false, no, off, got {raw!r}; TF32 stays off.")
    return False


def _cell_path_from_environment() -> str:
    raw = os.environ.get("GPUKB_CUDA_CELL_PATH", "")
    try:
        return checked_cell_path(raw) if raw.strip() else "auto"
    except ValueError as error:
        warn_user(f"gpukb: environment variable GPUKB_CUDA_CELL_PATH ignored ({error}); "
                  "using 'auto'.")
        return "auto"


def _is_cuda_dlpack(obj) -> bool:
    device = getattr(obj, "__dlpack_device__", None)
    if device is None or not hasattr(obj, "__dlpack__"):
        return False
    try:
        return int(device()[0]) in (2, 3, 13)  # kDLCUDA, kDLCUDAHost, kDLCUDAManaged
    except Exception:  # noqa: BLE001 - not a DLPack device array after all
        return False


class CUDABackend(Backend):
    name = "cuda"
    array_types = ("cupy:ndarray",) + _VIEWED_TYPES
    priority = 0
    install_hint = INSTALL_HINT

    def __init__(self) -> None:
        super().__init__()
        self.simulated = _simulated()
        if self.simulated:
            # Same kernels on NumPy arrays; "cpu" keeps NumPy arrays in automatic selection.
            self.array_types = ("cupy:ndarray", "numpy:ndarray")
            self.priority = -1
        self.allow_tf32 = _tf32_from_environment()
        self.cell_path = _cell_path_from_environment()

    # -- options: checked when set, so that a bad value fails at the assignment, GPU or not ------

    @property
    def allow_tf32(self) -> bool:
        return self._allow_tf32

    @allow_tf32.setter
    def allow_tf32(self, value) -> None:
        self._allow_tf32 = checked_allow_tf32(value)

    @property
    def cell_path(self) -> str:
        return self._cell_path

    @cell_path.setter
    def cell_path(self, value) -> None:
        self._cell_path = checked_cell_path(value)

    # -- availability and arrays ---------------------------------------------------------------

    def is_available(self):
        if self.simulated:
            if importlib.util.find_spec("numba_cuda") is None:
                return unavailable("NUMBA_ENABLE_CUDASIM is set but numba-cuda is not installed")
            return available()
        problem = _cuda_driver_problem()
        if problem is not None:
            return unavailable(problem)
        if importlib.util.find_spec("cupy") is None:
            return unavailable("CuPy is not installed")
        if importlib.util.find_spec("numba_cuda") is None:
            return unavailable("numba-cuda is not installed")
        try:
            problem = _numpy_problem(numpy, importlib.metadata.version("numba-cuda"))
        except importlib.metadata.PackageNotFoundError:   # importable but unrecorded: no version
            problem = None
        if problem is not None:
            return unavailable(problem)
        return available()

    def _load_xp(self):
        if self.simulated:
            import numpy

            return numpy
        import cupy

        return cupy

    def to_numpy(self, array):
        import numpy

        if self.simulated or isinstance(array, numpy.ndarray):
            return numpy.asarray(array)
        return self.xp.asnumpy(array)

    def _to_cupy(self, tree):
        """Leaves that are GPU arrays of another library, as CuPy views (no copy)."""
        import optree

        cupy = self.xp

        def convert(leaf):
            if isinstance(leaf, cupy.ndarray):
                return leaf
            if hasattr(leaf, "__cuda_array_interface__"):
                return cupy.asarray(leaf)
            if _is_cuda_dlpack(leaf):
                return cupy.from_dlpack(leaf)
            return leaf

        return optree.tree_map(convert, tree)

    # -- the rnn loop ------------------------------------------------------------------------------

    def rnn(self, step_function, inputs, initial_states, **options):
        return self._on_inputs_device(super().rnn, step_function, inputs, initial_states, options)

    def rnn_vjp(self, step_function, inputs, initial_states, **options):
        return self._on_inputs_device(super().rnn_vjp, step_function, inputs, initial_states,
                                      options)

    def rnn_pullback(self, residuals, step_function, inputs, initial_states, **options):
        if not self.simulated and isinstance(residuals, (list, tuple)):
            residuals = self._to_cupy(tuple(residuals))
        rebuild = functools.partial(super().rnn_pullback, residuals)
        return self._on_inputs_device(rebuild, step_function, inputs, initial_states, options)

    def rnn_residual_specs(self, step_function, inputs, initial_states, **options):
        return self._on_inputs_device(super().rnn_residual_specs, step_function, inputs,
                                      initial_states, options)

    def _on_inputs_device(self, run, step_function, inputs, initial_states, options):
        """``run`` (the base class's rnn or rnn_vjp) with GPU arrays of other libraries viewed as
        CuPy arrays, on the inputs' GPU (CuPy's current stream of that device)."""
        if self.simulated:
            return run(step_function, inputs, initial_states, **options)
        inputs = self._to_cupy(inputs)
        if isinstance(initial_states, (list, tuple)):
            initial_states = self._to_cupy(initial_states)
        for key in ("mask", "constants", "input_length"):
            if options.get(key) is not None:
                options[key] = self._to_cupy(options[key])
        import optree

        cupy = self.xp
        device = next((leaf.device for leaf in optree.tree_leaves(inputs)
                       if isinstance(leaf, cupy.ndarray)), None)
        if device is None:
            return run(step_function, inputs, initial_states, **options)
        with device:
            return run(step_function, inputs, initial_states, **options)

    def _fused_problem(self, call):
        """Why no fused cell kernel may run ``call`` (``cell_path`` included), or None."""
        from .._fused import cell_problem
        from ..cells import Cell

        if not isinstance(call.step_function, Cell):
            return "the step function is not a gpukb.cells cell"
        return "cell_path is 'generic'" if self.cell_path == "generic" else cell_problem(call)

    def plan(self, call):
        """The persistent kernel, the per-step path or the generic loop for ``call``, and why
        (``cell_path`` forces a path; see ``gpukb.backends._cuda_cells.choose``)."""
        problem = self._fused_problem(call)
        if problem is not None:
            masking = ("one masking kernel per step" if call.step_mask is not None
                       else "no mask, so no masking kernel")
            return Plan(self.name, GENERIC, f"not fused: {problem}; {masking}")
        from . import _cuda_cells

        choice = _cuda_cells.choose(call, self.cell_path)
        if choice.tiling is None:
            return Plan(self.name, PER_STEP, choice.reason)
        return Plan(self.name, PERSISTENT, choice.reason, detail=choice.tiling)

    def run_plan(self, plan, call):
        if plan.path in (PERSISTENT, PER_STEP):
            from . import _cuda_cells

            return _cuda_cells.run(call, plan.detail, self.allow_tf32)
        from . import _cuda_generic
        from .._rnn import run_generic
        from ..kernels.cuda import _runtime

        if call.step_mask is None:   # nothing to mask: the plain generic loop
            return run_generic(call)
        return _cuda_generic.run_masked(call, _runtime.Launcher(call.xp))

    def fused_rnn(self, call):
        """The documented hook, for callers that use it: the planned fused path, or
        NotImplemented when the plan is the generic loop."""
        plan = self.plan(call)
        return NotImplemented if plan.path == GENERIC else self.run_plan(plan, call)

    # -- gradients: rnn_vjp --------------------------------------------------------------------

    def plan_vjp(self, call):
        """A cell the forward fuses: the fused forward with every output kept, then the fused
        backward: its reverse loop in one launch of the persistent backward kernel when the
        forward's plan is the persistent kernel (path ``persistent``, the forward's tiling as
        ``detail``), else per step (``per_step``; ``detail`` None). Anything else the generic
        path, and why."""
        problem = self._fused_problem(call)
        if problem is not None:
            return Plan(self.name, GENERIC, f"not fused: {problem}; the step's derivative in the "
                                            "generic reverse loop")
        forward = self.plan(call)
        cell = call.step_function
        layout = cell.kernel_layout
        head = (f"{layout.name} cell in {numpy.dtype(cell.dtype)}: forward on the {forward.path} "
                f"path ({forward.reason}); ")
        if forward.path == PERSISTENT:
            tiling = forward.detail
            phases = " in two phases per step" if layout.reset_before else ""
            return Plan(self.name, PERSISTENT,
                        head + f"backward persistent: one launch of {tiling.blocks} block(s) of "
                        f"{tiling.threads} threads runs the reverse loop{phases}",
                        detail=tiling)
        per_step = ("two fused kernels and two cuBLAS GEMMs" if layout.reset_before
                    else "one fused kernel and one cuBLAS GEMM")
        return Plan(self.name, PER_STEP, head + f"backward per step: {per_step} per step",
                    detail=None)

    def run_vjp_plan(self, plan, call, given):
        if plan.path in _FUSED_VJP_PATHS:
            from .._vjp.pullback import Pullback
            from . import _cuda_vjp

            result, backward = _cuda_vjp.fused_cell_vjp(call, plan.detail, self.allow_tf32)
            return result, Pullback(call, result, backward, given)
        return super().run_vjp_plan(plan, call, given)

    def run_vjp_plan_recomputing(self, plan, call, given):
        """A fused cell's vjp keeps only every step's output already (its pullback rebuilds the
        pre-activations from them, ``_cuda_vjp``): ``recompute`` has nothing more to drop, so it
        is ``run_vjp_plan``. The generic path drops its tape (the base class)."""
        if plan.path in _FUSED_VJP_PATHS:
            return self.run_vjp_plan(plan, call, given)
        return super().run_vjp_plan_recomputing(plan, call, given)

    def vjp_residuals(self, plan, call):
        if plan.path not in _FUSED_VJP_PATHS:
            return None
        from . import _cuda_vjp

        return (_cuda_vjp.residual_specs(call),
                lambda r: _cuda_vjp.from_residuals(call, r, plan.detail, self.allow_tf32))

    def fused_rnn_vjp(self, call):
        """The documented hook: the fused cell vjp, or NotImplemented when the vjp plan is the
        generic path."""
        plan = self.plan_vjp(call)
        if plan.path == GENERIC:
            return NotImplemented
        from . import _cuda_vjp

        return _cuda_vjp.fused_cell_vjp(call, plan.detail, self.allow_tf32)

    # -- session ---------------------------------------------------------------------------------

    def on_clear_session(self) -> bool:
        """Drop the compiled kernels and free CuPy's pools; False when neither was there."""
        released = False
        runtime = sys.modules.get("gpukb.kernels.cuda._runtime")
        if runtime is not None:
            released = bool(runtime._CACHE)  # kernels compiled in this process
            runtime.clear_caches()
        cupy = sys.modules.get("cupy")
        if cupy is not None:  # only if this process ever used CuPy
            cupy.get_default_memory_pool().free_all_blocks()
            cupy.get_default_pinned_memory_pool().free_all_blocks()
            released = True
        return released
