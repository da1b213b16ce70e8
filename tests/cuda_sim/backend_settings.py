"""Settings of the cuda backend that the simulator tests change for one block and put back."""

from __future__ import annotations

import contextlib

import gpukb


@contextlib.contextmanager
def cell_path(path):
    """The cuda backend's ``cell_path`` set to ``path`` inside the block (yields the backend)."""
    backend = gpukb.get_backend("cuda")
    saved = backend.cell_path
    backend.cell_path = path
    try:
        yield backend
    finally:
        backend.cell_path = saved
