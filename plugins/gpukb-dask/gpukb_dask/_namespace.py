"""``dask.array`` bound to the chunk type of one call's inputs.

gpukb's validation builds a few arrays with ``xp.empty``/``xp.zeros`` (the mask as (T, B), the
lengths' bounds) and fills them from the user's arrays. ``dask.array.empty`` makes NumPy chunks by
default, and filling those from CuPy chunks fails while the graph is built (NumPy refuses to
convert a CuPy array): creation functions here pass the inputs' chunk type as ``meta``.
"""

from __future__ import annotations

from typing import Any

_CREATION = ("empty", "zeros", "ones", "full")


class ChunkNamespace:
    def __init__(self, dask_array: Any, meta: Any) -> None:
        self._da = dask_array
        self._meta = meta

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._da, name)
        if name not in _CREATION:
            return value

        def create(shape: Any, *args: Any, **kwargs: Any) -> Any:
            kwargs.setdefault("meta", self._meta)
            return value(shape, *args, **kwargs)

        return create

    def __repr__(self) -> str:
        return f"ChunkNamespace(dask.array, chunks of {type(self._meta).__module__}.{type(self._meta).__qualname__})"
