"""gpukb.keras models on the cuda backend, under the CUDA simulator: the fused CUDA cell kernels
give Keras's recorded outputs for a few small saved models (``tests/fixtures/keras_models``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import gpukb
from gpukb.keras import load_model
from gpukb.backends import _cuda_cells as cells

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "keras_models"
MANIFEST = json.loads((FIXTURES / "manifest.json").read_text())

CASES = [
    ("seq_lstm", "keras3"),
    ("seq_gru_reset_before", "tf_keras_h5"),
    ("embedding_mask_sequences", "tf_keras_keras"),  # masked GRU and SimpleRNN
    ("bidirectional_return_state", "keras3"),        # masked, both directions, states
]


@pytest.mark.parametrize("path", ["auto", "step"])
@pytest.mark.parametrize("case, writer", CASES)
def test_saved_models_on_the_cuda_kernels_match_keras(case, writer, path):
    info = MANIFEST["cases"][case]
    npz = np.load(FIXTURES / info["npz"])
    model = load_model(FIXTURES / info["files"][writer]["file"], backend="cuda")
    backend = gpukb.get_backend("cuda")
    saved = backend.cell_path
    backend.cell_path = path
    cells._last.path = None
    try:
        out = model.predict(npz["x0"])
    finally:
        backend.cell_path = saved
    assert cells.last_path() is not None  # the fused cell kernels ran
    n = len(info["models"][info["files"][writer]["model"]]["outputs"])
    for got, want in zip(out if isinstance(out, list) else [out], [npz[f"{writer}.y{i}"] for i in range(n)]):
        assert type(got) is np.ndarray and got.dtype == np.float32
        error = np.linalg.norm(got.astype(np.float64) - want) / np.linalg.norm(want.astype(np.float64))
        assert error <= 1e-5, f"{case} {writer}: relative error {error:.2e}"
