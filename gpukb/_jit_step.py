"""Step functions compiled by Numba: ``gpukb.jit_step``.

``@gpukb.jit_step`` (bare, or with ``numba.njit`` options: ``@gpukb.jit_step(cache=True)``)
marks a Python step function and compiles it with ``numba.njit`` on first use. On the ``cpu``
backend, ``gpukb.rnn`` runs such a step (or any ``numba.njit`` dispatcher passed as step
function) inside one compiled time loop (``gpukb/backends/_jit_loop.py`` decides which calls).
Everywhere else it is an ordinary step function: called with NumPy arrays it runs the compiled
code, called with anything else (CuPy, torch, nested dicts) it runs the original Python
function, ``.py_func``.

Numba is imported only when a ``jit_step`` is first called or an rnn call is checked for the
fused loop, never by ``import gpukb``.
"""

from __future__ import annotations

import functools
import sys
import threading
from typing import Any, Callable, overload

import numpy as np

from ._warn import warn_user

__all__ = ["JitStep", "jit_step"]


class JitStep:
    """A Python step function compiled lazily with ``numba.njit(**options)``.

    ``py_func`` is the original function, ``options`` the njit options, ``dispatcher`` the Numba
    dispatcher (created on first access). When Numba cannot compile the function for the array
    types it is given (a typing error, a missing SciPy for ``@``, any other compile failure), the
    step warns once for those types and runs ``py_func`` for them from then on (same results,
    slower); other types still run compiled. ``compile_errors`` maps each such signature
    (a tuple of ``"dtype[ndim]"`` strings, one per array) to Numba's error.
    """

    __name__: str  # with the rest of py_func's attributes, by functools.update_wrapper

    def __init__(self, py_func: Callable[..., Any], options: dict[str, Any] | None = None) -> None:
        if not callable(py_func):
            raise TypeError(f"jit_step: expected a function, got {type(py_func).__name__}.")
        self.py_func = py_func
        self.options = dict(options or {})
        self._dispatcher = None
        self._lock = threading.Lock()
        self.compile_errors: dict = {}
        functools.update_wrapper(self, py_func)

    @property
    def dispatcher(self):
        """The ``numba.njit`` dispatcher of ``py_func`` (imports Numba; compiles on first call)."""
        if self._dispatcher is None:
            with self._lock:
                if self._dispatcher is None:
                    import numba

                    self._dispatcher = numba.njit(**self.options)(self.py_func)
        return self._dispatcher

    @property
    def compile_error(self):
        """The most recent compile failure (see ``compile_errors``), or None."""
        return next(reversed(self.compile_errors.values()), None)

    @property
    def compiled(self) -> bool:
        """False once Numba failed to compile the step for some array types."""
        return not self.compile_errors

    def falls_back(self, signature) -> bool:
        """Whether calls with this ``signature`` (see ``array_signature``) run as plain Python."""
        return signature in self.compile_errors

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        signature = array_signature(args) if not kwargs and _numba_friendly(args) else None
        if signature is not None and signature not in self.compile_errors:
            try:
                dispatcher = self.dispatcher
            except ImportError as err:  # no Numba: plain Python it is
                self.record_compile_error(signature, err)
            else:
                try:
                    return dispatcher(*args)
                except Exception as err:
                    if self._has_compiled(dispatcher, args):
                        raise  # an error of the compiled step itself, at run time
                    self.record_compile_error(signature, err)  # Numba could not compile it
        return self.py_func(*args, **kwargs)

    @staticmethod
    def _has_compiled(dispatcher, args) -> bool:
        import numba

        try:
            return tuple(numba.typeof(a) for a in args) in dispatcher.overloads
        except Exception:
            return False

    def record_compile_error(self, signature, err) -> None:
        """Run ``signature``'s calls as plain Python from now on; warn once for it."""
        if signature in self.compile_errors:
            return
        self.compile_errors[signature] = err
        text = str(err).strip()
        reason = f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__
        warn_user(
            f"gpukb.jit_step: Numba could not compile step function {self.__name__!r} for arrays "
            f"of dtype {', '.join(signature)} ({reason}); calls with these dtypes run as plain "
            "Python from now on (same results, slower). The full Numba error is in "
            ".compile_errors.")

    def __repr__(self) -> str:
        return f"<gpukb.jit_step {getattr(self.py_func, '__qualname__', self.py_func)!r}>"


def array_signature(args) -> tuple:
    """The dtype and rank of every array (and the type of every number) in ``args``, in order:
    what decides whether Numba can compile a step for them."""
    signature: list = []
    for a in args:
        if isinstance(a, (tuple, list)):
            signature.extend(array_signature(a))
        elif isinstance(a, np.ndarray):
            signature.append(f"{a.dtype}[{a.ndim}d]")
        else:
            signature.append(type(a).__name__)
    return tuple(signature)


def _numba_friendly(args) -> bool:
    """NumPy arrays (possibly in tuples/lists) and numbers only: what Numba can be handed."""
    for a in args:
        if isinstance(a, np.ndarray) or isinstance(a, (int, float, complex, np.generic)):
            continue
        if isinstance(a, (tuple, list)) and _numba_friendly(a):
            continue
        return False
    return True


@overload
def jit_step(func: Callable[..., Any], **options: Any) -> JitStep: ...
@overload
def jit_step(func: None = None, **options: Any) -> Callable[[Callable[..., Any]], JitStep]: ...


def jit_step(func: Callable[..., Any] | None = None,
             **options: Any) -> JitStep | Callable[[Callable[..., Any]], JitStep]:
    """Mark a step function for Numba: ``@jit_step`` or ``@jit_step(cache=True, fastmath=...)``.

    The options are ``numba.njit``'s. Nothing is compiled (or imported) until the first call.
    """
    if func is None:
        return lambda f: JitStep(f, options)
    if isinstance(func, JitStep):
        return func if not options else JitStep(func.py_func, {**func.options, **options})
    return JitStep(func, options)


def numba_dispatcher(step_function):
    """The Numba CPU dispatcher of a step function, or None if it is not Numba-compiled."""
    if isinstance(step_function, JitStep):
        try:
            return step_function.dispatcher
        except ImportError:  # no Numba: the generic loop runs its Python function
            return None
    if "numba" not in sys.modules:  # no dispatcher can exist before Numba is imported
        return None
    try:
        from numba.core.registry import CPUDispatcher
    except ImportError:  # pragma: no cover - a Numba without this layout
        return None
    if isinstance(step_function, CPUDispatcher) and not step_function.targetoptions.get("forceobj"):
        return step_function
    return None
