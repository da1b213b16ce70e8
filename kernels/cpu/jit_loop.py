"""The whole rnn time loop in one compiled function, for step functions compiled by Numba.

``run(call, step)`` takes a ``gpukb._rnn.RnnCall`` whose step function is a Numba CPU dispatcher
``step`` (a ``numba.njit`` function, or the dispatcher of a ``gpukb.jit_step``), and whose arrays
the caller (``gpukb._jit_step.fused_step``) found eligible: one NumPy input array, a flat
list/tuple of NumPy state arrays, a tuple of NumPy constant arrays. It returns
``(last_output, outputs, new_states)`` exactly as ``gpukb._rnn.run_generic`` would, or
NotImplemented (before the step has run even once) when the step's result type does not fit the
fused loop (nested outputs, a bare array as new states, ...) or the loop does not compile: the
generic loop then runs the call and raises the step's own errors.

How it works
- The loop source is generated per (number of states, number of constants) from ``_TEMPLATE`` and
  compiled with ``numba.njit`` once per process for each set of argument types. The step comes in
  as a function pointer (a Numba ``FunctionType``), so a new step function costs only its own
  compile (about a second), never a new loop. The helpers the loop calls for masking and copying
  are cached on disk through ``_numba_cache.cached_njit``. Nothing compiles at import.
- Once compiled, nothing here takes Numba's global compiler lock: compiled signatures are looked
  up, not compiled again, so a call never waits for another thread's compile, and a process
  forked while another thread compiles can still run its compiled steps.
- The loop runs ``nogil`` in blocks of steps of about ``_BLOCK_SECONDS`` each, returning to Python
  in between: Ctrl-C (delivered only while Python runs) arrives as KeyboardInterrupt within one
  block, and other Python threads run meanwhile.
- Every one of the T step calls happens inside the compiled loop, so the step always gets the
  same argument types (one specialization). The input is read time-major: a batch-major input is
  copied once to (T, B, ...) C order, so each step input is a C-contiguous slice. The step
  receives private C-contiguous copies of the states (two buffers per state, swapped each step,
  so a new state that is a view of the old one is never overwritten while read); the caller's
  ``initial_states`` are not passed to it.
- Masking is the generic loop's: at a masked (sample, step) every state keeps its previous value
  and the output is zeros (``zero_output_for_mask``) or the previous masked output (zeros before
  the first processed step). Outputs go straight into a preallocated buffer, in processing order,
  layout (B, T, ...) or (T, B, ...), time length 1 when ``return_all_outputs`` is False.
- The shape checks of the generic loop run inside the loop at every step (output batch axis at
  the first step, output shape unchanged later, state count for list results, state shapes);
  a failure stops the loop after that step and is re-raised here through
  ``gpukb._rnn.check_step_output`` / ``check_new_states``, so the ValueError is the generic
  loop's, word for word, after as many step calls. Dtype and rank are static in Numba: a step
  whose result types do not match the states goes to the generic loop before running (which
  raises the same error).
"""

from __future__ import annotations

import threading
import time
import warnings

import numba
import numpy as np

from ._numba_cache import cached_njit

MAX_STATES = 8
MAX_CONSTANTS = 8
# info: [0] status, [1] state index or count, [2] step, [3] output ndim, [4:36] the first output's
# shape, [36] ndim of the offending array, [37:69] its shape (Numba arrays have at most 32 dims),
# [70] the step running now (where an exception of the step was raised).
_INFO_SIZE = 72
_SHAPE0, _BAD_NDIM, _BAD_SHAPE, _RUNNING = 4, 36, 37, 70

_OK, _BAD_BATCH, _OUTPUT_CHANGED, _STATE_COUNT, _STATE_SHAPE = 0, 1, 2, 3, 4

_lock = threading.Lock()
_functions: dict = {}
_loops: dict = {}
_failed: set = set()

_TEMPLATE = '''
def fused_loop(step, x, mask, has_mask, backwards, zero_out, return_all, time_major, out, prev,
               i_begin, i_end, {params}info):
    T = x.shape[0]
    B = x.shape[1]
    tout = T if return_all else 1
    for i in range(i_begin, i_end):
        t = T - 1 - i if backwards else i
        info[{running}] = i
        res = step(x[t], ({step_states}))
        o = res[0]
        new = res[1]
        if i == 0:
            info[3] = o.ndim
            for d in range(o.ndim):
                info[4 + d] = o.shape[d]
            if o.shape[0] != B:
                info[0] = {bad_batch}
                break
            K = o.size // B
            out = np.empty((tout, B, K) if time_major else (B, tout, K), out.dtype)
            prev = np.zeros(B * K, out.dtype)
        elif _shape_changed(o, info):
            info[0] = {output_changed}
            info[2] = i
            _record_shape(o, info)
            break
        if len(new) != {n_states}:
            info[0] = {state_count}
            info[1] = len(new)
            info[2] = i
            break
{commit_states}
        _commit_output(o, prev, out, mask, t, has_mask, zero_out, i if return_all else 0,
                       return_all or i == T - 1, time_major)
{swap_states}
    return out, prev, ({final_states})
'''

_COMMIT_STATE = '''
        n{k} = new[{k}]
        if n{k}.shape != s{k}.shape:
            info[0] = {state_shape}
            info[1] = {k}
            info[2] = i
            _record_shape(n{k}, info)
            break
        _commit_state(n{k}, s{k}, r{k}, mask, t, has_mask)'''


def _tuple(names) -> str:
    return "".join(f"{n}, " for n in names)


def _source(n_states: int, n_constants: int) -> str:
    s = [f"s{k}" for k in range(n_states)]
    r = [f"r{k}" for k in range(n_states)]
    c = [f"c{k}" for k in range(n_constants)]
    commit = "".join(_COMMIT_STATE.format(k=k, state_shape=_STATE_SHAPE) for k in range(n_states))
    swap = "".join(f"\n        s{k}, r{k} = r{k}, s{k}" for k in range(n_states))
    return _TEMPLATE.format(
        params=_tuple(s + r + c),
        step_states=_tuple(s + c),
        final_states=_tuple(s + r),
        n_states=n_states,
        commit_states=commit or "        pass",
        swap_states=swap or "        pass",
        running=_RUNNING, bad_batch=_BAD_BATCH, state_count=_STATE_COUNT, output_changed=_OUTPUT_CHANGED,
    )


@cached_njit()
def _commit_state(n, cur, nxt, mask, t, has_mask):
    """nxt = where(mask[t] (per sample), n, cur); nxt and cur are private C buffers."""
    nf = n.ravel()  # a view when n is C-contiguous, else a copy
    cf = cur.ravel()
    xf = nxt.ravel()
    if not has_mask:
        for j in range(nf.size):
            xf[j] = nf[j]
        return
    B = cur.shape[0]
    K = cf.size // B if B > 0 else 0
    for b in range(B):
        src = nf if mask[t, b] else cf
        for j in range(b * K, (b + 1) * K):
            xf[j] = src[j]


@cached_njit()
def _commit_output(o, prev, out, mask, t, has_mask, zero_out, slot, write, time_major):
    """Mask the step output (prev holds the previous masked output) and write its slot."""
    of = o.ravel()
    B = o.shape[0]
    K = of.size // B
    if has_mask:
        for b in range(B):
            if mask[t, b]:
                for j in range(b * K, (b + 1) * K):
                    prev[j] = of[j]
            elif zero_out:
                for j in range(b * K, (b + 1) * K):
                    prev[j] = 0
        src = prev
    else:
        src = of
    if write:
        for b in range(B):
            for k in range(K):
                if time_major:
                    out[slot, b, k] = src[b * K + k]
                else:
                    out[b, slot, k] = src[b * K + k]


@cached_njit()
def _shape_changed(o, info):
    for d in range(o.ndim):
        if o.shape[d] != info[4 + d]:
            return True
    return False


@cached_njit()
def _record_shape(a, info):
    info[36] = a.ndim
    for d in range(a.ndim):
        info[37 + d] = a.shape[d]


def _loop_function(n_states: int, n_constants: int):
    """The Python source of the loop for this arity, as a function (generated once per process)."""
    key = (n_states, n_constants)
    function = _functions.get(key)
    if function is None:
        namespace = {"np": np, "_commit_state": _commit_state, "_commit_output": _commit_output,
                     "_shape_changed": _shape_changed, "_record_shape": _record_shape}
        exec(compile(_source(*key), f"<gpukb fused loop {key}>", "exec"), namespace)
        function = _functions[key] = namespace["fused_loop"]
    return function


def _compiled_loop(n_states: int, n_constants: int, arg_types, step):
    """The loop compiled for exactly ``arg_types`` (its first, the step's FunctionType), or None
    when it cannot compile (warned once).

    The step comes in as a function pointer, not as its dispatcher: a dispatcher argument would
    make Numba compile (and keep in memory) a new loop for every step function, doubling what a
    new step costs. Compiling is then disabled, so a call with a new step function reuses this
    machine code (Numba converts the dispatcher to the pointer) instead of specialising again.
    """
    key = (n_states, n_constants, arg_types)
    loop = _loops.get(key)  # no lock on the common path: see run
    if loop is not None or key in _failed:
        return loop
    with _lock:
        if key in _loops or key in _failed:
            return _loops.get(key)
        try:
            loop = numba.njit(nogil=True)(_loop_function(n_states, n_constants))  # nogil: other threads run
            loop.compile(arg_types)
            loop.disable_compile()
        except Exception as err:  # a limitation of this loop, not of the step: the generic loop runs it
            _failed.add(key)
            warnings.warn(
                f"gpukb.rnn: the fused time loop did not compile for step function "
                f"{getattr(step, '__name__', step)!r} ({type(err).__name__}: "
                f"{str(err).splitlines()[0]}); running the generic loop, with identical results.",
                RuntimeWarning, stacklevel=5)
            return None
        _loops[key] = loop
        return loop


def _result_fits(return_type, n_states: int) -> bool:
    """Whether the step's Numba return type is ``(array, tuple/list of n_states arrays)``."""
    from numba.core import types

    if not isinstance(return_type, types.BaseTuple) or len(return_type) != 2:
        return False
    output, states = return_type.types if hasattr(return_type, "types") else tuple(return_type)
    if not isinstance(output, types.Array) or output.ndim < 1:
        return False
    if isinstance(states, types.List):
        return isinstance(states.dtype, types.Array)
    if isinstance(states, types.BaseTuple):
        return len(states) == n_states and all(isinstance(s, types.Array) for s in states)
    return False


def _states_fit(return_type, state_types) -> bool:
    """Dtype and rank of each new state (static in Numba) match the initial states'."""
    from numba.core import types

    states = return_type[1]
    items = [states.dtype] * len(state_types) if isinstance(states, types.List) else list(states)
    return all(n.dtype == s.dtype and n.ndim == s.ndim for n, s in zip(items, state_types))


def _slice_type(x_type):
    """The Numba type of ``x[t]`` inside the loop."""
    return x_type.copy(ndim=x_type.ndim - 1, layout="C" if x_type.layout == "C" else "A")


class _Fake:
    """Stands for an array of a given shape and dtype in the generic loop's checks."""

    def __init__(self, shape, dtype):
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.ndim = len(self.shape)


def _raise_like_generic(call, info, out_dtype, state_dtypes, container):
    """Raise the generic loop's ValueError for the failure the compiled loop recorded in info."""
    from gpukb._rnn import check_new_states, check_step_output

    status, index = int(info[0]), int(info[1])
    first_shape = tuple(int(s) for s in info[_SHAPE0:_SHAPE0 + int(info[3])])
    bad_shape = tuple(int(s) for s in info[_BAD_SHAPE:_BAD_SHAPE + int(info[_BAD_NDIM])])
    if status == _BAD_BATCH:
        check_step_output(call, _Fake(first_shape, out_dtype), None)
    elif status == _OUTPUT_CHANGED:
        first = check_step_output(call, _Fake(first_shape, out_dtype), None)
        check_step_output(call, _Fake(bad_shape, out_dtype), first)
    elif status == _STATE_COUNT:
        # Only the count matters: check_new_states raises on it before looking at any leaf.
        check_new_states(call, container([_Fake((), out_dtype)] * index), set())
    elif status == _STATE_SHAPE:
        fake = [_Fake(s.shape, s.dtype) for s in call.state_leaves]
        fake[index] = _Fake(bad_shape, state_dtypes[index])
        check_new_states(call, container(fake), set())
    raise AssertionError(f"gpukb fused loop: unexpected status {status}")  # pragma: no cover


# Steps per compiled call are chosen so that one call takes about this long: the time loop returns
# to Python between blocks, where Ctrl-C is delivered (a compiled loop cannot see signals).
_BLOCK_SECONDS = 0.05
_FIRST_BLOCK_STEPS = 16


def run(call, step, on_compile_error=None):
    """Run ``call`` with the Numba dispatcher ``step`` in one compiled loop, or NotImplemented.

    ``on_compile_error(err)`` is called when Numba cannot compile the step itself for this call's
    types (a ``gpukb.jit_step`` records it and falls back to Python); the generic loop then runs
    the call. Without it, such a call also returns NotImplemented and the generic loop raises
    the step's own error.
    """
    from numba.core import types
    from numba.core.errors import NumbaError
    from numba.np.numpy_support import as_dtype

    # The loop reads x time-major: x[t] is the step input. A batch-major input is copied once to
    # (T, B, ...) C order, so every step gets a C-contiguous slice (Numba's `@` and array
    # expressions are faster on those, and its `@` would otherwise copy the slice every step).
    x = call.input_leaves[0]
    x = np.ascontiguousarray(x if call.time_major else np.swapaxes(x, 0, 1))
    n_states, n_constants = len(call.state_leaves), len(call.constants)
    if n_states > MAX_STATES or n_constants > MAX_CONSTANTS:
        return NotImplemented
    cur = [np.array(s, order="C", copy=True) for s in call.state_leaves]
    nxt = [np.empty_like(s) for s in cur]
    has_mask = call.step_mask is not None
    mask = np.ascontiguousarray(call.step_mask, dtype=np.bool_) if has_mask else np.ones((1, 1), np.bool_)
    info = np.zeros(_INFO_SIZE, np.int64)
    try:
        x_type = numba.typeof(x)
        state_types = tuple(numba.typeof(s) for s in cur)
        const_types = tuple(numba.typeof(c) for c in call.constants)
    except (ValueError, TypeError, NumbaError):  # an array Numba cannot type
        return NotImplemented

    # Type the step alone first: a step that does not compile, or whose result does not fit the
    # fused loop, goes to the generic loop before it runs even once (which raises its errors).
    # A compiled signature is looked up without Dispatcher.compile, which takes Numba's global
    # compiler lock: held by another thread's compile, that lock would stall this call (and
    # hang a process forked meanwhile).
    step_sig = (_slice_type(x_type), types.Tuple(state_types + const_types))
    compiled = step.overloads.get(step_sig)
    if compiled is None:
        try:
            step.compile(step_sig)
            compiled = step.overloads[step_sig]
        except Exception as err:  # any compile failure (typing, lowering, SciPy missing for `@`)
            if on_compile_error is not None:
                on_compile_error(err)
            return NotImplemented
    return_type = compiled.signature.return_type
    if not _result_fits(return_type, n_states) or not _states_fit(return_type, state_types):
        return NotImplemented
    try:
        out = np.empty((0, 0, 0), as_dtype(return_type[0].dtype))  # replaced at step 0
    except (NumbaError, NotImplementedError, TypeError):
        return NotImplemented
    prev = np.empty(0, out.dtype)

    head = (step, x, mask, has_mask, call.go_backwards, call.zero_output_for_mask,
            call.return_all_outputs, call.time_major)
    fn_type = types.FunctionType(return_type(*step_sig))
    arg_types = (fn_type,) + tuple(numba.typeof(a) for a in (*head[1:], out, prev, 0, 0, *cur, *nxt,
                                                              *call.constants, info))
    loop = _compiled_loop(n_states, n_constants, arg_types, step)
    if loop is None:
        return NotImplemented

    T = x.shape[0]
    i, block = 0, min(T, _FIRST_BLOCK_STEPS)
    while i < T:
        end = min(T, i + block)
        started = time.perf_counter()
        try:
            out, prev, buffers = _interruptible(loop, *head, out, prev, i, end, *cur, *nxt,
                                                *call.constants, info)
        except Exception as err:  # raised by the step: say where, as the generic loop does
            from gpukb._rnn import note_step_error

            running = int(info[_RUNNING])
            note_step_error(err, call, running, T - 1 - running if call.go_backwards else running)
            raise
        if info[0] != _OK:
            container = list if isinstance(return_type[1], types.List) else tuple
            _raise_like_generic(call, info, out.dtype, [s.dtype for s in cur], container)
        cur, nxt = list(buffers[:n_states]), list(buffers[n_states:])
        block = _next_block(block, end - i, time.perf_counter() - started)
        i = end

    rest = tuple(int(s) for s in info[_SHAPE0 + 1:_SHAPE0 + int(info[3])])
    outputs = out.reshape(out.shape[:2] + rest)
    last = outputs[-1] if call.time_major else outputs[:, -1]
    return last, outputs, call.pack_states(cur)


def _next_block(block: int, steps: int, seconds: float) -> int:
    """Steps for the next compiled call: about _BLOCK_SECONDS of work, growing at most 8x a time."""
    if seconds <= 0:
        return block * 8
    return max(1, min(block * 8, int(steps * _BLOCK_SECONDS / seconds)))


def _interruptible(loop, *args):
    """loop(*args), turning Numba's report of a Ctrl-C that arrived during the call into a plain
    KeyboardInterrupt: Python runs the signal handler inside a helper Numba calls while boxing
    the results, and Numba then raises SystemError("... returned a result with an exception
    set") with the KeyboardInterrupt only as its cause."""
    try:
        return loop(*args)
    except SystemError as err:
        seen = err
        while seen is not None:
            if isinstance(seen, KeyboardInterrupt):
                raise KeyboardInterrupt() from None
            seen = seen.__cause__ or seen.__context__
        raise
