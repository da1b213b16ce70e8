"""gpukb-torch: runs ``gpukb.rnn`` on PyTorch tensors.

A third-party-style plugin that uses only gpukb's public API: it subclasses ``gpukb.Backend``,
registers itself in the ``gpukb.backends`` entry-point group, and lets gpukb's shared rnn
semantics run on a namespace of torch functions bound to the inputs' device.
"""

from __future__ import annotations

import importlib.util

import gpukb

from .namespace import TorchNamespace

__all__ = ["TorchBackend", "TorchNamespace"]


class TorchBackend(gpukb.Backend):
    name = "torch"
    array_types = ("torch:Tensor",)
    priority = 0
    install_hint = "Install PyTorch: pip install torch."

    def is_available(self):
        if importlib.util.find_spec("torch") is None:
            return gpukb.Availability(False, "PyTorch is not installed")
        return gpukb.Availability(True)

    def _load_xp(self):
        return TorchNamespace("cpu")

    def namespace(self, leaves):
        """Bind the namespace to the device of the inputs, so buffers are made where they live."""
        for leaf in leaves:
            device = getattr(leaf, "device", None)
            if device is not None:
                return TorchNamespace(device)
        return self.xp

    def to_numpy(self, array):
        return array.detach().cpu().numpy()

    def on_clear_session(self):
        import sys

        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available():
            torch.cuda.empty_cache()
