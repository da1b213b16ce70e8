"""Which gpukb backend runs a block of a given chunk type (NumPy: ``cpu``, CuPy: ``cuda``, ...).

gpukb's own automatic rule, through the public ``gpukb.backend_for``: among the backends that
take the chunk's type, gpukb's built-in ones first, then the highest ``priority``, then the name.
So a plugin's array type reaches that plugin's backend, and NumPy chunks stay on ``cpu`` even
when a plugin (or the CUDA simulator's ``cuda``) also takes NumPy arrays. The user's choice of
backend (``backend="dask"``, ``use_backend``) chose this plugin; it is not the blocks' backend.
"""

from __future__ import annotations

from typing import Any

import gpukb


def block_backend(chunk: Any, name: str) -> gpukb.Backend:
    """The backend that runs blocks like ``chunk`` (a Dask array's ``_meta``), or a TypeError
    naming the argument ``name``. An unavailable backend raises gpukb's usual RuntimeError
    with its reason and install hint, at the call."""
    try:
        return gpukb.backend_for(chunk)
    except TypeError as error:
        kind = f"{type(chunk).__module__}.{type(chunk).__qualname__}"
        raise TypeError(
            f"rnn: {name} is a Dask array of {kind} chunks, and no installed gpukb backend takes "
            f"{kind} arrays (backends: {', '.join(gpukb.list_backends())}); gpukb-dask runs each "
            "block on the backend of its chunk type (NumPy: cpu, CuPy: cuda).") from error
