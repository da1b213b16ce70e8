"""gpukb-torch: runs ``gpukb.rnn`` on PyTorch tensors.

A third-party-style plugin that uses only gpukb's public API: it subclasses ``gpukb.Backend``,
registers itself in the ``gpukb.backends`` entry-point group, and lets gpukb's shared rnn
semantics run on a namespace of torch functions bound to the inputs' device.

gpukb loads this module in every process that discovers backends, so it must stay light:
importing torch takes seconds, and happens only when a tensor is actually dispatched here
(``namespace`` and ``_load_xp`` import ``.namespace``, which imports torch).

``gpukb_torch.LSTM`` and ``gpukb_torch.GRU`` (``nn``) are drop-ins for torch.nn.LSTM/GRU on
gpukb's fused kernels; they too load torch only when first named.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import gpukb

__all__ = ["GRU", "LSTM", "TorchBackend", "TorchNamespace", "release_openmp_threads"]

#: Before the drop-ins run gpukb's CPU kernels, let torch's OpenMP worker threads go, so that
#: they do not spin beside gpukb's threads (``_openmp``); set False to leave them alone.
release_openmp_threads = True


def __getattr__(name: str) -> Any:
    # ``from gpukb_torch import TorchNamespace`` (or LSTM, GRU) still works; it imports torch
    # at that moment.
    if name == "TorchNamespace":
        from .namespace import TorchNamespace

        return TorchNamespace
    if name in ("LSTM", "GRU"):
        from . import nn

        return getattr(nn, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class TorchBackend(gpukb.Backend):
    name = "torch"
    array_types = ("torch:Tensor",)
    priority = 0
    install_hint = "Install PyTorch: pip install torch."

    def is_available(self) -> gpukb.Availability:
        # find_spec locates torch without importing it.
        if importlib.util.find_spec("torch") is None:
            return gpukb.Availability(False, "PyTorch is not installed")
        return gpukb.Availability(True)

    def _load_xp(self) -> Any:
        from .namespace import TorchNamespace

        return TorchNamespace("cpu")

    def namespace(self, leaves: list[Any]) -> Any:
        """Bind the namespace to the device of the inputs, so buffers are made where they live."""
        from .namespace import TorchNamespace

        for leaf in leaves:
            device = getattr(leaf, "device", None)
            if device is not None:
                return TorchNamespace(device)
        return self.xp

    def to_numpy(self, array: Any) -> Any:
        return array.detach().cpu().numpy()

    def on_clear_session(self) -> bool:
        """Empty torch's CUDA cache; True when there was one (clear_session then collects)."""
        import sys

        torch = sys.modules.get("torch")  # never imported just to empty a cache
        if torch is not None and torch.cuda.is_available():
            torch.cuda.empty_cache()
            return True
        return False
