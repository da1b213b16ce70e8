"""Step functions compiled by Numba: ``gpukb.jit_step`` and the rule for the fused time loop.

``@gpukb.jit_step`` (bare, or with ``numba.njit`` options: ``@gpukb.jit_step(cache=True)``)
marks a Python step function and compiles it with ``numba.njit`` on first use. On the ``cpu``
backend, ``gpukb.rnn`` runs such a step (or any ``numba.njit`` dispatcher passed as step
function) inside one compiled time loop (``gpukb.kernels.cpu.jit_loop``). Everywhere else it is
an ordinary step function: called with NumPy arrays it runs the compiled code, called with
anything else (CuPy, torch, nested dicts) it runs the original Python function, ``.py_func``.

Numba is imported only when a ``jit_step`` is first called or an rnn call is checked for the
fused loop, never by ``import gpukb``.
"""

from __future__ import annotations

import functools
import sys
import threading
import warnings

import numpy as np

__all__ = ["JitStep", "jit_step", "fused_step"]

MAX_FUSED_STATES = 8
MAX_FUSED_CONSTANTS = 8


class JitStep:
    """A Python step function compiled lazily with ``numba.njit(**options)``.

    ``py_func`` is the original function, ``options`` the njit options, ``dispatcher`` the Numba
    dispatcher (created on first access). If Numba cannot compile the function for the arguments
    it is given (a ``numba.core.errors.TypingError``), the step warns once and from then on runs
    ``py_func`` (results are the same; only speed is lost).
    """

    def __init__(self, py_func, options=None):
        if not callable(py_func):
            raise TypeError(f"jit_step: expected a function, got {type(py_func).__name__}.")
        self.py_func = py_func
        self.options = dict(options or {})
        self._dispatcher = None
        self._lock = threading.Lock()
        self.compile_error = None  # the TypingError that made this step fall back to py_func
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
    def compiled(self) -> bool:
        """False once Numba failed to compile the step (it then runs as plain Python)."""
        return self.compile_error is None

    def __call__(self, *args, **kwargs):
        if self.compile_error is None and not kwargs and _numba_friendly(args):
            try:
                dispatcher = self.dispatcher
            except ImportError as err:  # no Numba: plain Python it is
                self._give_up(err)
            else:
                try:
                    return dispatcher(*args)
                except Exception as err:
                    if self._has_compiled(dispatcher, args):
                        raise  # an error of the compiled step itself, at run time
                    self._give_up(err)  # Numba could not compile it for these arguments
        return self.py_func(*args, **kwargs)

    @staticmethod
    def _has_compiled(dispatcher, args) -> bool:
        import numba

        try:
            return tuple(numba.typeof(a) for a in args) in dispatcher.overloads
        except Exception:
            return False

    def _give_up(self, err):
        self.compile_error = err
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        warnings.warn(
            f"gpukb.jit_step: Numba could not compile step function {self.__name__!r} "
            f"({first}); it runs as plain Python from now on (same results, slower). "
            "The full Numba error is in its .compile_error.",
            RuntimeWarning, stacklevel=3)

    def __repr__(self) -> str:
        return f"<gpukb.jit_step {getattr(self.py_func, '__qualname__', self.py_func)!r}>"


def _numba_friendly(args) -> bool:
    """NumPy arrays (possibly in tuples/lists) and numbers only: what Numba can be handed."""
    for a in args:
        if isinstance(a, np.ndarray) or isinstance(a, (int, float, complex, np.generic)):
            continue
        if isinstance(a, (tuple, list)) and _numba_friendly(a):
            continue
        return False
    return True


def jit_step(func=None, **options):
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
        if not step_function.compiled:
            return None
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


def fused_step(call):
    """The Numba dispatcher the fused time loop may run ``call`` (an ``RnnCall``) with, else None.

    Eligible: a Numba-compiled step; NumPy arrays only; one input array (a bare array, not a
    pytree); ``initial_states`` a flat list/tuple of at most 8 arrays of rank >= 1; ``constants``
    at most 8 arrays; B >= 1. Whether the step's result fits (an array and a list/tuple of the
    states) is checked on its Numba type, before any step runs, by the loop itself.
    """
    if call.xp is not np or not isinstance(call.step_function, JitStep) and "numba" not in sys.modules:
        return None
    if len(call.input_leaves) != 1 or call.input_treespec.num_nodes != 1:
        return None
    if call.batch_size < 1 or not _plain(call.input_leaves[0]):
        return None
    states = call.initial_states
    if not isinstance(states, (list, tuple)) or len(states) > MAX_FUSED_STATES:
        return None
    if len(call.state_leaves) != len(states):
        return None
    if not all(_plain(s) and s.ndim >= 1 for s in states):
        return None
    if len(call.constants) > MAX_FUSED_CONSTANTS or not all(_plain(c) for c in call.constants):
        return None
    return numba_dispatcher(call.step_function)  # last: it may import Numba


def _plain(a) -> bool:
    """A NumPy array of a dtype Numba handles natively (bool, integers, float32/64, complex)."""
    return (isinstance(a, np.ndarray) and a.dtype.kind in "biufc" and a.dtype != np.float16
            and a.dtype.isnative)
