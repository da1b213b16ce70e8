"""Reading weight arrays out of HDF5 safely, and checking that every layer got the weights its
config implies.

h5py is imported here, lazily (``import gpukb`` never imports it): through ``importlib``, which
also keeps mypy from asking for h5py's type stubs (it ships none).
"""

from __future__ import annotations

import importlib
import math
from types import ModuleType
from typing import Any

import numpy as np

from .._errors import ModelFileError

# A dataset may declare a huge shape while storing almost nothing (a fill value, compressed):
# reading it would allocate the declared size. Like Keras (``saving_lib.safe_get_h5_dataset``),
# refuse datasets above 4 GiB that declare over 1000 times what they store.
_BOMB_FLOOR_BYTES = 1 << 32
_MAX_EXPANSION = 1000

_RNN_CLASSES = ("LSTM", "GRU", "SimpleRNN")
# Layers of the supported list that own no weights.
_WEIGHTLESS = frozenset({
    "InputLayer", "Masking", "Activation", "Dropout", "SpatialDropout1D", "GaussianNoise",
    "GaussianDropout", "Concatenate", "Add", "Multiply", "Average", "Flatten", "Reshape",
})


def h5py() -> ModuleType:
    """The h5py module, imported on first use."""
    try:
        return importlib.import_module("h5py")
    except ImportError as e:      # a broken install: h5py is a dependency of gpukb
        raise ImportError(
            "gpukb.keras reads saved Keras models with h5py, which is not importable "
            f"({e}); install it with: pip install 'h5py>=3.8'") from e


def read_dataset(group: Any, name: str, path: str, context: str) -> np.ndarray:
    """``group[name]`` as a NumPy array; only plain datasets stored inside the file."""
    h5 = h5py()
    link = group.get(name, getlink=True)
    if link is None:
        raise ModelFileError(f"{path!r}: {context}: weight {name!r} is missing")
    if isinstance(link, h5.ExternalLink):
        raise ModelFileError(
            f"{path!r}: {context}: weight {name!r} is a link to another file, which gpukb "
            f"does not follow")
    dataset = group[name]
    if not isinstance(dataset, h5.Dataset):
        raise ModelFileError(f"{path!r}: {context}: {name!r} is not a weight array")
    if dataset.external or dataset.is_virtual:
        raise ModelFileError(
            f"{path!r}: {context}: weight {name!r} is stored outside the file, which gpukb "
            f"does not read")
    if dataset.dtype.kind not in "biuf":
        raise ModelFileError(
            f"{path!r}: {context}: weight {name!r} has dtype {dataset.dtype}, not a number")
    declared = math.prod(dataset.shape or ()) * dataset.dtype.itemsize
    stored = dataset.id.get_storage_size()
    if declared > _BOMB_FLOOR_BYTES and declared > _MAX_EXPANSION * stored:
        raise ModelFileError(
            f"{path!r}: {context}: weight {name!r} declares {declared} bytes but stores only "
            f"{stored}: refusing to expand it")
    try:
        return np.asarray(dataset[()])
    except (OSError, RuntimeError, ValueError) as e:
        raise ModelFileError(
            f"{path!r}: {context}: weight {name!r} cannot be read (truncated or corrupt "
            f"file?): {e}") from e


def expected_weights(class_name: str, config: dict[str, Any]) -> tuple[str, ...] | None:
    """The names of the weights a layer of the supported list owns, in ``get_weights()``
    order; None for a class this reader does not know (its weights are not checked)."""
    if class_name in _WEIGHTLESS:
        return ()
    bias = ("bias",) if config.get("use_bias", True) else ()
    if class_name == "Dense":
        return ("kernel",) + bias
    if class_name in _RNN_CLASSES:
        return ("kernel", "recurrent_kernel") + bias
    if class_name == "Embedding":
        return ("embeddings",)
    if class_name == "BatchNormalization":
        return (("gamma",) if config.get("scale", True) else ()) \
            + (("beta",) if config.get("center", True) else ()) \
            + ("moving_mean", "moving_variance")
    if class_name == "LayerNormalization":
        rms = bool(config.get("rms_scaling", False))
        return (("gamma",) if config.get("scale", True) or rms else ()) \
            + (("beta",) if config.get("center", True) and not rms else ())
    inner = config.get("layer")
    if class_name in ("Bidirectional", "TimeDistributed") and isinstance(inner, dict):
        forward = expected_weights(str(inner.get("class_name")), inner.get("config") or {})
        if class_name == "TimeDistributed" or forward is None:
            return forward
        backward_layer = config.get("backward_layer") or inner
        backward = expected_weights(str(backward_layer.get("class_name")),
                                    backward_layer.get("config") or {})
        return None if backward is None else \
            tuple(f"forward {n}" for n in forward) + tuple(f"backward {n}" for n in backward)
    return None


def check_weights_present(name: str, class_name: str, config: dict[str, Any], index: int,
                          weights: list[np.ndarray], path: str) -> None:
    """``ModelFileError`` when the file stores fewer weights for a layer than its config
    implies (shapes are checked where the layer is built)."""
    needed = expected_weights(class_name, config)
    if needed is not None and len(weights) < len(needed):
        raise ModelFileError(
            f"{path!r}: layer {name!r} ({class_name}, position {index}) needs "
            f"{len(needed)} weight(s) ({', '.join(needed)}) but the file stores "
            f"{len(weights)}: the weights are missing or the file is incomplete")
