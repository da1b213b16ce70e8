"""The Keras activations on the GPU: the one table of ``kernels/cells/activations.py``.

Kernels call ``activate(code, x)`` (``device_activation``), the table's own function, for float32
and float64 alike; codes are ``code(name)``. The table's ``tanh`` and ``sigmoid`` are registered
here for the CUDA target with their portable bodies (libdevice's ``tanh`` and ``exp``; sigmoid
through ``exp(-|x|)``, which never overflows). Under the CUDA simulator the kernels run the
table's Python functions as they are.
"""

from __future__ import annotations

from ..cells import activations as table
from ..cells import register
from . import _runtime

CODES = table.CODES
code = table.code


def _register_cuda() -> None:
    """The CUDA implementations of the table's target-specific functions: their own bodies."""
    from numba.cuda.extending import overload

    def compiled_as_written(function):
        def typer(x):
            return function

        return typer

    for function in (table.tanh, table.sigmoid):
        overload(function, target="cuda", jit_options={"forceinline": True})(
            compiled_as_written(function))


register()
if not _runtime.simulator_enabled():
    _register_cuda()


def device_activation(dtype):
    """The device function ``activate(code, x)`` (one definition for every float dtype)."""
    return table.activate
