"""gpukb-dask: runs ``gpukb.rnn`` on Dask arrays, one task per block of the batch.

A plugin that uses gpukb's public plugin API: it subclasses ``gpukb.Backend``, registers itself in
the ``gpukb.backends`` entry-point group, takes NumPy arrays next to Dask inputs
(``companion_types``), checks every call with gpukb's own validation (``Backend.prepare``) before
building anything, and runs each block with ``gpukb.rnn`` on the block's own backend (NumPy
chunks: ``cpu``, CuPy chunks: ``cuda``), so the fused kernels do the work on the workers.

gpukb loads this module in every process that discovers backends, so it stays light: Dask is
imported only when a Dask array reaches the backend.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import gpukb

__all__ = ["DaskBackend"]


class DaskBackend(gpukb.Backend):
    name = "dask"
    array_types = ("dask.array.core:Array",)
    # NumPy states, masks, lengths and constants next to Dask inputs: chunked to match the inputs.
    companion_types = ("numpy:ndarray",)
    priority = 0
    install_hint = 'Install Dask: pip install "dask[array]" distributed (or pip install gpukb-dask).'

    def is_available(self) -> gpukb.Availability:
        # find_spec locates dask without importing it.
        if importlib.util.find_spec("dask") is None:
            return gpukb.Availability(False, "Dask is not installed")
        return gpukb.Availability(True)

    def _load_xp(self) -> Any:
        import dask.array

        return dask.array

    def namespace(self, leaves: list[Any]) -> Any:
        """``dask.array``, with arrays it creates in the inputs' chunk type (CuPy chunks stay CuPy)."""
        import numpy

        from ._namespace import ChunkNamespace

        for leaf in leaves:
            meta = getattr(leaf, "_meta", None)
            if meta is not None and type(meta) is not numpy.ndarray:
                return ChunkNamespace(self.xp, meta)
        return self.xp

    def asarray(self, value: Any) -> Any:
        """A NumPy array as a Dask array (Dask's automatic chunks: one chunk for a small array)."""
        return self.xp.asarray(value)

    def to_numpy(self, array: Any) -> Any:
        """A Dask array computed (with the current scheduler), or a NumPy or CuPy block, as NumPy."""
        import numpy

        if hasattr(array, "compute") and hasattr(array, "dask"):
            array = array.compute()
        if hasattr(array, "get") and type(array).__module__.split(".")[0] == "cupy":
            array = array.get()
        return numpy.asarray(array)

    def rnn(self, step_function: Any, inputs: Any, initial_states: Any, **options: Any) -> tuple[Any, Any, Any]:
        """Check the call (gpukb's errors, before anything is built), learn the outputs' shapes
        and dtypes, and return lazy Dask arrays: one task per batch block runs ``gpukb.rnn``."""
        from ._call import prepare_dask_call
        from ._graph import build_results

        return build_results(prepare_dask_call(self, step_function, inputs, initial_states, options))
