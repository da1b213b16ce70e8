"""Which gpukb backend runs a block of a given chunk type (NumPy: ``cpu``, CuPy: ``cuda``, ...).

The rule is gpukb's own for a call on arrays of one type (``gpukb._dispatch.select_backend``,
private, so restated here from the public ``list_backends``/``get_backend``): among the backends
whose ``array_types`` name a class the chunk is an instance of, gpukb's built-in ones first, then
the highest ``priority``, then the name. So a plugin's array type reaches that plugin's backend,
and NumPy chunks stay on ``cpu`` even when a plugin (or the CUDA simulator's ``cuda``) also takes
NumPy arrays.
"""

from __future__ import annotations

import sys
from typing import Any

import gpukb


def _resolve(spec: str) -> type | None:
    """The class ``"module:QualName"`` names, if its module is imported (a chunk's is)."""
    module_name, _, qualname = spec.partition(":")
    obj: Any = sys.modules.get(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
    return obj if isinstance(obj, type) else None


def _builtin(backend: gpukb.Backend) -> bool:
    return type(backend).__module__.split(".")[0] == "gpukb"


def block_backend(chunk: Any, name: str) -> gpukb.Backend:
    """The backend that runs blocks like ``chunk`` (a Dask array's ``_meta``), or a TypeError
    naming the argument ``name``. An unavailable backend raises gpukb's usual RuntimeError
    with its reason and install hint, at the call."""
    owners = []
    for backend_name in gpukb.list_backends():
        backend = gpukb.get_backend(backend_name, check_available=False)
        if any(isinstance(chunk, cls) for cls in map(_resolve, backend.array_types) if cls is not None):
            owners.append(backend)
    if not owners:
        kind = f"{type(chunk).__module__}.{type(chunk).__qualname__}"
        raise TypeError(
            f"rnn: {name} is a Dask array of {kind} chunks, and no installed gpukb backend takes "
            f"{kind} arrays (backends: {', '.join(gpukb.list_backends())}); gpukb-dask runs each "
            "block on the backend of its chunk type (NumPy: cpu, CuPy: cuda).")
    best = min(owners, key=lambda b: (not _builtin(b), -b.priority, b.name))
    return gpukb.get_backend(best.name)  # gpukb's error if it is not available here
