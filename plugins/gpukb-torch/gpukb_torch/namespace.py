"""A NumPy-like namespace over torch, bound to one device.

gpukb's rnn core calls ``asarray``, ``zeros``, ``empty`` and ``where`` on its namespace; torch
needs the device passed at creation, so those are bound here. Everything else (``tanh``,
``exp``, ``clip``, ...) is torch's own function.
"""

from __future__ import annotations

import numpy as np
import torch


def _torch_dtype(dtype):
    """torch dtypes pass through; NumPy dtypes and names map to torch's."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    return torch.from_numpy(np.empty(0, dtype=np.dtype(dtype))).dtype


class TorchNamespace:
    def __init__(self, device):
        self.device = torch.device(device)

    def asarray(self, value, dtype=None):
        return torch.as_tensor(value, dtype=_torch_dtype(dtype), device=self.device)

    def zeros(self, shape, dtype=None):
        return torch.zeros(tuple(shape), dtype=_torch_dtype(dtype), device=self.device)

    def empty(self, shape, dtype=None):
        return torch.empty(tuple(shape), dtype=_torch_dtype(dtype), device=self.device)

    def where(self, condition, x, y):
        return torch.where(condition, x, y)

    def __getattr__(self, name):
        return getattr(torch, name)

    def __repr__(self):
        return f"TorchNamespace(device={str(self.device)!r})"
