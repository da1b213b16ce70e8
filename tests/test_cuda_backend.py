"""The cuda backend where there is no GPU: availability reasons, light imports, options, clear_session."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest

from helpers import run_python

import gpukb
from gpukb.backends import cuda as cuda_backend


def test_import_and_availability_check_load_no_cupy_numba_or_numba_cuda(tmp_path):
    code = ("import sys, json\n"
            "from gpukb.backends.cuda import CUDABackend\n"
            "b = CUDABackend(); b.is_available(); b.on_clear_session()\n"
            "print(json.dumps([m for m in ('cupy', 'numba', 'numba.cuda') if m in sys.modules]))")
    result = run_python(code, home=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []


def _find_spec_without(*missing):
    """find_spec for a machine where every package but ``missing`` is installed."""

    def find_spec(name, *args, **kwargs):
        return None if name in missing else object()

    return find_spec


def test_reason_names_the_missing_driver(monkeypatch):
    reason = "no CUDA driver found (libcuda could not be loaded)"
    monkeypatch.setattr(cuda_backend, "_cuda_driver_problem", lambda: reason)
    availability = cuda_backend.CUDABackend().is_available()
    assert not availability and "no CUDA driver" in availability.reason


class FakeDriver:
    def __init__(self, init_status=0, devices=0):
        self.init_status, self.devices = init_status, devices

    def cuInit(self, flags):
        return self.init_status

    def cuDeviceGetCount(self, pointer):
        pointer._obj.value = self.devices
        return 0


@pytest.mark.parametrize("driver, reason", [
    (FakeDriver(devices=0), "no CUDA device found"),
    (FakeDriver(init_status=100), "cuInit returned error 100"),
])
def test_reason_names_the_missing_device(monkeypatch, driver, reason):
    monkeypatch.setattr(cuda_backend.ctypes, "CDLL", lambda name: driver)
    assert reason in cuda_backend._cuda_driver_problem()


def test_driver_with_a_device_is_no_problem(monkeypatch):
    monkeypatch.setattr(cuda_backend.ctypes, "CDLL", lambda name: FakeDriver(devices=1))
    assert cuda_backend._cuda_driver_problem() is None


def test_driver_not_found(monkeypatch):
    def no_library(name):
        raise OSError(name)

    monkeypatch.setattr(cuda_backend.ctypes, "CDLL", no_library)
    assert "no CUDA driver found" in cuda_backend._cuda_driver_problem()


@pytest.mark.parametrize("missing, reason", [
    (("cupy",), "CuPy is not installed"),
    (("cupy", "numba_cuda"), "CuPy is not installed"),
    (("numba_cuda",), "numba-cuda is not installed"),
])
def test_reason_names_the_missing_package(monkeypatch, missing, reason):
    monkeypatch.setattr(cuda_backend, "_cuda_driver_problem", lambda: None)
    monkeypatch.setattr(cuda_backend.importlib.util, "find_spec", _find_spec_without(*missing))
    availability = cuda_backend.CUDABackend().is_available()
    assert not availability and availability.reason == reason


def test_available_when_driver_device_and_packages_are_there(monkeypatch):
    monkeypatch.setattr(cuda_backend, "_cuda_driver_problem", lambda: None)
    monkeypatch.setattr(cuda_backend.importlib.util, "find_spec", lambda name, *a, **k: object())
    assert cuda_backend.CUDABackend().is_available()


class NumPyWithout:
    """A NumPy module as NumPy 2.5 has it: no row_stack."""
    __version__ = "2.5.2"


@pytest.mark.parametrize("numpy_module, numba_cuda, broken", [
    (NumPyWithout, "0.30.4", True),
    (NumPyWithout, "0.30.0", True),
    (NumPyWithout, "0.30.5", False),
    (NumPyWithout, "0.31.0rc1", False),
    (__import__("numpy"), "0.30.4", False) if hasattr(__import__("numpy"), "row_stack") else
    (type("NumPyWith", (), {"row_stack": None, "__version__": "2.4.6"}), "0.30.4", False),
])
def test_numba_cuda_that_cannot_compile_with_numpy_2_5_is_named(numpy_module, numba_cuda, broken):
    problem = cuda_backend._numpy_problem(numpy_module, numba_cuda)
    assert (problem is not None) == broken
    if broken:
        assert f"numba-cuda {numba_cuda}" in problem and "NumPy 2.5.2" in problem
        assert "pip install 'numpy<2.5'" in problem


def test_unavailable_with_the_reason_when_numba_cuda_cannot_compile(monkeypatch):
    monkeypatch.setattr(cuda_backend, "_cuda_driver_problem", lambda: None)
    monkeypatch.setattr(cuda_backend.importlib.util, "find_spec", lambda name, *a, **k: object())
    monkeypatch.delattr(cuda_backend.numpy, "row_stack", raising=False)   # as in NumPy 2.5
    monkeypatch.setattr(cuda_backend.importlib.metadata, "version",
                        lambda name: {"numba-cuda": "0.30.4"}[name])
    availability = cuda_backend.CUDABackend().is_available()
    assert not availability and "np.row_stack" in availability.reason


def test_outside_the_simulator_only_gpu_arrays_are_accepted():
    backend = cuda_backend.CUDABackend()
    assert not backend.simulated
    assert backend.array_types == ("cupy:ndarray", "numba.cuda.cudadrv.devicearray:DeviceNDArray")
    assert "numpy:ndarray" not in backend.array_types


def test_simulator_mode_in_a_fresh_interpreter(tmp_path):
    """With NUMBA_ENABLE_CUDASIM=1 the backend accepts NumPy, is available without a GPU, and
    still leaves NumPy arrays to cpu in automatic selection."""
    if importlib.util.find_spec("numba_cuda") is None:
        pytest.skip("numba-cuda is not installed (the test extra installs it)")
    code = ("import json, numpy as np, gpukb\n"
            "from gpukb import _dispatch\n"
            "b = gpukb.get_backend('cuda')\n"
            "x = np.zeros((1, 2, 1), np.float32)\n"
            "print(json.dumps([b.simulated, list(b.array_types), bool(b.is_available()),"
            " _dispatch.select_backend([x]).name]))")
    result = run_python(code, home=tmp_path, env={"NUMBA_ENABLE_CUDASIM": "1"})
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == [
        True, ["cupy:ndarray", "numpy:ndarray"], True, "cpu"]


@pytest.mark.parametrize("value, expected", [("1", True), ("true", True), ("0", False), ("", False)])
def test_tf32_is_opt_in_through_the_environment(monkeypatch, value, expected):
    monkeypatch.setenv("GPUKB_CUDA_TF32", value)
    assert cuda_backend.CUDABackend().allow_tf32 is expected


def test_cell_path_from_the_environment(monkeypatch):
    monkeypatch.setenv("GPUKB_CUDA_CELL_PATH", " Step ")
    assert cuda_backend.CUDABackend().cell_path == "step"
    monkeypatch.delenv("GPUKB_CUDA_CELL_PATH")
    assert cuda_backend.CUDABackend().cell_path == "auto"


def test_options_are_readable_and_settable_without_a_gpu(tmp_path):
    """backend_available says why not; get_backend(check_available=False) gives the options."""
    code = ("import sys, json, gpukb\n"
            "available = gpukb.backend_available('cuda')\n"
            "b = gpukb.get_backend('cuda', check_available=False)\n"
            "before = [b.cell_path, b.allow_tf32]\n"
            "b.cell_path, b.allow_tf32 = 'Persistent', True\n"
            "print(json.dumps([bool(available), available.reason, before, b.cell_path, b.allow_tf32,"
            " gpukb.get_backend('cuda', check_available=False).cell_path,"
            " [m for m in ('cupy', 'numba', 'numba.cuda') if m in sys.modules]]))")
    result = run_python(code, home=tmp_path)
    assert result.returncode == 0, result.stderr
    available, reason, before, path, tf32, path_again, heavy = json.loads(result.stdout.strip().splitlines()[-1])
    if available:
        pytest.skip("a usable GPU is present")
    assert "gpukb[cuda12]" in reason and "gpukb[cuda13]" in reason
    assert before == ["auto", False] and (path, tf32, path_again) == ("persistent", True, "persistent")
    assert heavy == []


@pytest.mark.parametrize("option, value, error, words", [
    ("cell_path", "fastest", ValueError, r"cell_path must be one of \('auto', 'step', 'persistent', 'generic'\), got 'fastest'"),
    ("cell_path", None, TypeError, r"cell_path must be a str"),
    ("allow_tf32", 1, TypeError, r"allow_tf32 must be True or False, got int 1"),
    ("allow_tf32", "yes", TypeError, r"allow_tf32 must be True or False"),
])
def test_option_values_are_checked_when_set(option, value, error, words):
    backend = cuda_backend.CUDABackend()
    before = getattr(backend, option)
    with pytest.raises(error, match=words):
        setattr(backend, option, value)
    assert getattr(backend, option) == before


@pytest.mark.parametrize("variable, value, option, default", [
    ("GPUKB_CUDA_CELL_PATH", "fastest", "cell_path", "auto"),
    ("GPUKB_CUDA_TF32", "maybe", "allow_tf32", False),
])
def test_a_bad_option_variable_warns_naming_it_and_keeps_the_default(monkeypatch, variable, value,
                                                                     option, default):
    monkeypatch.setenv(variable, value)
    with pytest.warns(RuntimeWarning, match=f"{variable} ignored.*{value}"):
        backend = cuda_backend.CUDABackend()
    assert getattr(backend, option) == default


def test_on_clear_session_reports_whether_it_had_anything_to_release(monkeypatch):
    from gpukb.kernels.cuda import _runtime

    monkeypatch.delitem(sys.modules, "cupy", raising=False)
    backend = cuda_backend.CUDABackend()
    _runtime.clear_caches()
    assert backend.on_clear_session() is False
    _runtime._CACHE["probe"] = object()
    assert backend.on_clear_session() is True
    assert "probe" not in _runtime._CACHE


def test_clear_session_without_cupy_drops_the_kernel_cache():
    from gpukb.kernels.cuda import _runtime

    _runtime._CACHE["probe"] = object()
    cuda_backend.CUDABackend().on_clear_session()
    assert "probe" not in _runtime._CACHE


def test_gpukb_clear_session_reaches_the_cuda_backend():
    from gpukb.kernels.cuda import _runtime

    gpukb.list_backends()  # discovery registers the clear_session hook
    _runtime._CACHE["probe"] = object()
    gpukb.clear_session()
    assert "probe" not in _runtime._CACHE


def test_dlpack_device_detection():
    class Device:
        def __init__(self, kind):
            self.kind = kind

        def __dlpack__(self, stream=None):
            raise AssertionError("not called")

        def __dlpack_device__(self):
            return (self.kind, 0)

    assert cuda_backend._is_cuda_dlpack(Device(2))
    assert not cuda_backend._is_cuda_dlpack(Device(1))  # kDLCPU: would need a copy
    assert not cuda_backend._is_cuda_dlpack(object())
