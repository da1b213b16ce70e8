"""gpukb-torch: discovery, automatic selection for torch tensors, and the conformance suite."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="gpukb-torch needs PyTorch")
pytest.importorskip("gpukb_torch", reason="gpukb-torch is not installed (pip install -e plugins/gpukb-torch)")

import gpukb
from gpukb.testing.test_conformance import (  # noqa: F401  (pytest collects the imported tests)
    test_errors_come_before_any_step,
    test_generic_step_matches_reference,
    test_keras_cells_match_reference,
    test_returns_the_backends_array_type,
)


@pytest.fixture(scope="module")
def backend():
    """The conformance suite's backend: this plugin's (as GPUKB_TEST_BACKEND=torch would pick)."""
    return gpukb.get_backend("torch")


def test_plugin_is_discovered_and_available():
    assert "torch" in gpukb.list_backends()
    record = {r.name: r for r in gpukb._dispatch.backend_records()}["torch"]
    assert record.availability and record.distribution == "gpukb-torch"


def test_torch_tensors_select_the_plugin_automatically():
    x = torch.ones((2, 3, 1))
    h = torch.zeros((2, 1))
    last, outputs, states = gpukb.rnn(lambda xt, s: (xt + s[0], [xt + s[0]]), x, [h])
    assert isinstance(outputs, torch.Tensor)
    assert outputs[:, :, 0].tolist() == [[1, 2, 3], [1, 2, 3]]
    assert gpukb.get_backend("torch") is not gpukb.get_backend("cpu")


def test_discovery_and_numpy_calls_do_not_import_torch(tmp_path):
    """gpukb loads the entry point in every process that finds backends; importing torch takes
    seconds, so it must wait until a tensor is dispatched to this backend."""
    code = textwrap.dedent("""
        import sys
        import numpy as np
        import gpukb

        assert "torch" in gpukb.list_backends()
        assert gpukb.get_backend("torch").is_available()
        gpukb.rnn(lambda x, s: (x + s[0], [x + s[0]]), np.ones((2, 3, 1)), [np.zeros((2, 1))])
        gpukb.clear_session()
        assert "torch" not in sys.modules, "torch was imported"

        from gpukb_torch import TorchNamespace  # still importable by name: now torch loads
        assert "torch" in sys.modules
    """)
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                            text=True, timeout=300, env=dict(os.environ, GPUKB_HOME=str(tmp_path)))
    assert result.returncode == 0, result.stdout + result.stderr


def test_numpy_inputs_still_go_to_cpu():
    assert gpukb._dispatch.select_backend([np.zeros(2)]).name == "cpu"


def test_mixing_torch_and_numpy_is_a_type_error():
    with pytest.raises(TypeError, match=r"torch:Tensor and numpy:ndarray"):
        gpukb.rnn(lambda xt, s: (xt, s), torch.ones((2, 3, 1)), [np.zeros((2, 1))])


def test_lstm_cell_on_torch_matches_numpy():
    rng = np.random.default_rng(0)
    W = rng.standard_normal((3, 16)).astype(np.float32) / 2
    U = rng.standard_normal((4, 16)).astype(np.float32) / 2
    b = rng.standard_normal(16).astype(np.float32) / 10
    x = rng.standard_normal((2, 5, 3)).astype(np.float32)
    h0 = np.zeros((2, 4), np.float32)
    mask = np.array([[1, 1, 0, 1, 0], [0, 1, 1, 1, 1]], bool)
    cell = gpukb.cells.lstm(W, U, b)
    expected = gpukb.rnn(cell, x, [h0, h0], mask=mask)
    got = gpukb.rnn(cell, torch.from_numpy(x), [torch.from_numpy(h0)] * 2, mask=torch.from_numpy(mask))
    np.testing.assert_allclose(got[1].numpy(), expected[1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got[2][1].numpy(), expected[2][1], rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device for torch")
def test_cuda_tensors_stay_on_the_device():
    x = torch.ones((2, 3, 1), device="cuda")
    h = torch.zeros((2, 1), device="cuda")
    _, outputs, states = gpukb.rnn(lambda xt, s: (xt + s[0], [xt + s[0]]), x, [h])
    assert outputs.device.type == "cuda" and states[0].device.type == "cuda"


def test_documented_conformance_command_passes(tmp_path):
    """GPUKB_TEST_BACKEND=torch python -m pytest --pyargs gpukb.testing, as the README says."""
    env = dict(os.environ, GPUKB_TEST_BACKEND="torch", GPUKB_TEST_EXAMPLES="15", GPUKB_HOME=str(tmp_path))
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             "--pyargs", "gpukb.testing"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "4 passed" in result.stdout


def test_clear_session_hook_says_whether_it_freed_anything():
    backend = gpukb.get_backend("torch")
    # gpukb.clear_session skips its gc.collect() only when every backend answers False
    assert backend.on_clear_session() is torch.cuda.is_available()
