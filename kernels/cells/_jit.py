"""How the cell definitions become callable from compiled code: ``@jitable`` and ``register()``.

The definitions are plain Python functions. So importing them needs no Numba (``import gpukb``
reads the activation names from here), and Numba's CUDA simulator runs them as they are.
``register()``, which every kernel target calls before it compiles anything, hands each one to
``numba.extending.register_jitable(forceinline=True)``: callable from ``numba.njit`` and
``numba.cuda.jit`` code alike. ``forceinline`` puts LLVM's ``alwaysinline`` on them, so on the CPU
a row loop over a cell update still vectorises as if it were written out in the loop.

On the CPU a registered function takes the fastmath and error_model options of the kernel that
compiles it first (Numba's inherited flags): every CPU kernel that calls them compiles with the
same options (``kernels.cpu._common.KERNEL_OPTIONS``), so FMA contraction never depends on which
kernel ran first.

``constant(x, value)`` is ``value`` in ``x``'s type (NumPy scalar type in Python, the Numba type in
compiled code): a float32 kernel then never computes in float64, on either target.
"""

from __future__ import annotations

import threading

_marked: list = []
_registered = False
_lock = threading.Lock()


def jitable(function):
    """Mark a cell-definition function for ``register()`` (immediately registered if it ran)."""
    with _lock:
        if _registered:
            _register(function)
        else:
            _marked.append(function)
    return function


def constant(x, value):
    """``value`` converted to the type of ``x`` (compiled code: see ``register``)."""
    return type(x)(value)


def _register(function) -> None:
    from numba.extending import register_jitable

    register_jitable(forceinline=True)(function)


def _register_constant() -> None:
    from numba.core import types
    from numba.extending import overload

    @overload(constant, jit_options={"forceinline": True})
    def _constant(x, value):
        if isinstance(x, types.Boolean):
            return lambda x, value: bool(value)
        if isinstance(x, (types.Integer, types.Float, types.Complex)):
            numba_type = x

            def impl(x, value):
                return numba_type(value)

            return impl
        return None


def register() -> None:
    """Make every ``@jitable`` function (and ``constant``) callable from Numba code (once)."""
    global _registered
    with _lock:
        if _registered:
            return
        _register_constant()
        for function in _marked:
            _register(function)
        _marked.clear()
        _registered = True
