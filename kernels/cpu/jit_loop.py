"""The whole rnn time loop in one compiled function, around a step function compiled by Numba.

The kernel half of the cpu backend's jit loop: arrays, flags and a Numba CPU dispatcher in,
outputs and new states out. The driver (``gpukb/backends/_jit_loop.py``) decides whether a call
may run here, reports compile failures and raises the generic loop's errors.

    return_type = step_result_type(step, x, states, constants)   # compiles the step (Numba errors raise)
    problem = result_problem(return_type, states)                 # None when the loop can run it
    outputs, new_states = run(step, x, states, constants, step_mask, options, on_step_error)

``x`` is the call's input array, ``states`` a list of state arrays, ``constants`` a tuple of
arrays, ``step_mask`` a ``(T, B)`` bool array or None, ``options`` a ``kernels.options.LoopOptions``.
``run`` returns None when the loop itself does not compile (reported once), and raises
``LoopStopped`` when a step's result breaks a rule of the generic loop (shapes, state count).

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
  states are not passed to it.
- Masking is ``kernels/cells/masking``'s rule, per element. Outputs go straight into a
  preallocated buffer, in processing order, layout (B, T, ...) or (T, B, ...), time length 1
  when ``return_all_outputs`` is False.
- The shape checks of the generic loop run inside the loop at every step (output batch axis at
  the first step, output shape unchanged later, state count for list results, state shapes);
  a failure stops the loop after that step and ``run`` raises ``LoopStopped`` with what it found,
  after as many step calls as the generic loop makes. Dtype and rank are static in Numba: a step
  whose result types do not match the states is caught by ``result_problem`` before it runs.
"""

from __future__ import annotations

import threading
import time

import numba
import numpy as np

from ..cells import masking, register
from ._common import Flags
from ._numba_cache import cached_njit, ensure_fresh_cache

register()  # the masking rule (kernels/cells/masking) becomes callable from the loop

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
def fused_loop(step, x, mask, flags, out, prev, i_begin, i_end, {params}info):
    T = x.shape[0]
    B = x.shape[1]
    return_all = flags.return_all_outputs
    time_major = flags.time_major
    tout = T if return_all else 1
    for i in range(i_begin, i_end):
        t = T - 1 - i if flags.go_backwards else i
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
        _commit_output(o, prev, out, mask, t, flags, i if return_all else 0,
                       return_all or i == T - 1)
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
        _commit_state(n{k}, s{k}, r{k}, mask, t, flags.has_mask)'''


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
    """nxt = the masked new state (see kernels/cells/masking); nxt and cur are private C buffers."""
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
        valid = mask[t, b]
        n_row = nf[b * K:(b + 1) * K]   # slices indexed from 0 vectorise (kernels/cpu/_rows.py)
        c_row = cf[b * K:(b + 1) * K]
        x_row = xf[b * K:(b + 1) * K]
        for j in range(K):
            x_row[j] = masking.state_at(valid, n_row[j], c_row[j])


@cached_njit()
def _commit_output(o, prev, out, mask, t, flags, slot, write):
    """Mask the step output (prev holds the previous masked output) and write its slot."""
    of = o.ravel()
    B = o.shape[0]
    K = of.size // B
    if flags.has_mask:
        zero_out = flags.zero_output_for_mask
        for b in range(B):
            valid = mask[t, b]
            o_row = of[b * K:(b + 1) * K]
            p_row = prev[b * K:(b + 1) * K]
            for j in range(K):
                p_row[j] = masking.output_at(valid, o_row[j], p_row[j], zero_out)
        src = prev
    else:
        src = of
    if write:
        for b in range(B):
            s_row = src[b * K:(b + 1) * K]
            o_row = out[slot, b] if flags.time_major else out[b, slot]
            for k in range(K):
                o_row[k] = s_row[k]


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


def _compiled_loop(n_states: int, n_constants: int, arg_types, on_loop_error):
    """The loop compiled for exactly ``arg_types`` (its first, the step's FunctionType), or None
    when it cannot compile (``on_loop_error(err)`` is called the first time only).

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
        except Exception as err:  # a limitation of this loop, not of the step
            _failed.add(key)
            error = err
        else:
            _loops[key] = loop
            return loop
    if on_loop_error is not None:
        on_loop_error(error)
    return None


class LoopStopped(Exception):
    """The loop stopped after a step whose result breaks a rule of the generic loop.

    ``problem``: "batch" (the first output's batch axis is not B), "output_changed" (an output
    shape differs from the first's), "state_count" (a list of ``index`` new states), or
    "state_shape" (new state ``index`` has ``bad_shape``); ``step``: the processing step;
    ``first_output_shape``: the first step's output shape; ``states_are_list``: the step returns
    its new states as a list.
    """

    def __init__(self, problem, index, step, first_output_shape, bad_shape, states_are_list):
        super().__init__(f"{problem} at step {step}")
        self.problem, self.index, self.step = problem, index, step
        self.first_output_shape, self.bad_shape = first_output_shape, bad_shape
        self.states_are_list = states_are_list


_PROBLEMS = {_BAD_BATCH: "batch", _OUTPUT_CHANGED: "output_changed", _STATE_COUNT: "state_count",
             _STATE_SHAPE: "state_shape"}


def _step_signature(x, states, constants):
    """The Numba argument types of one step: a C-contiguous slice of the time-major input, then
    the tuple of (private C-contiguous) states and constants."""
    from numba.core import types

    slice_type = types.Array(numba.from_dtype(x.dtype), x.ndim - 1, "C")
    state_types = tuple(types.Array(numba.from_dtype(s.dtype), s.ndim, "C") for s in states)
    return slice_type, types.Tuple(state_types + tuple(numba.typeof(c) for c in constants))


def step_result_type(step, x, states, constants):
    """The Numba return type of ``step`` for one step of these arrays, compiled if it was not.

    Raises whatever Numba raises when the step does not compile for them. A compiled signature
    is looked up without Dispatcher.compile, which takes Numba's global compiler lock: held by
    another thread's compile, that lock would stall this call (and hang a process forked
    meanwhile).
    """
    signature = _step_signature(x, states, constants)
    compiled = step.overloads.get(signature)
    if compiled is None:
        step.compile(signature)
        compiled = step.overloads[signature]
    return compiled.signature.return_type


def result_problem(return_type, states):
    """Why the step's result type does not fit the loop, or None when it does: it must be
    ``(array, tuple or list of len(states) arrays)``, each new state of its state's dtype and
    rank, the output of a dtype NumPy has."""
    from numba.core import types
    from numba.core.errors import NumbaError
    from numba.np.numpy_support import as_dtype

    if not isinstance(return_type, types.BaseTuple) or len(return_type) != 2:
        return f"the step returns {return_type}, not (output, new_states)"
    output, new = return_type.types if hasattr(return_type, "types") else tuple(return_type)
    if not isinstance(output, types.Array) or output.ndim < 1:
        return f"the step's output is {output}, not an array"
    if isinstance(new, types.List) and isinstance(new.dtype, types.Array):
        items = [new.dtype] * len(states)
    elif isinstance(new, types.BaseTuple) and all(isinstance(t, types.Array) for t in new):
        items = list(new)
        if len(items) != len(states):
            return f"the step returns {len(items)} new states for {len(states)} states"
    else:
        return f"the step's new states are {new}, not a tuple or list of arrays"
    for i, (item, state) in enumerate(zip(items, states)):
        if item.dtype != numba.from_dtype(state.dtype) or item.ndim != state.ndim:
            return f"new state {i} is {item}, its state {state.dtype} of rank {state.ndim}"
    try:
        as_dtype(output.dtype)
    except (NumbaError, NotImplementedError, TypeError):
        return f"the step's output dtype {output.dtype} has no NumPy dtype"
    return None


def _stopped(info, states_are_list):
    """LoopStopped for the failure the compiled loop recorded in info."""
    first_shape = tuple(int(s) for s in info[_SHAPE0:_SHAPE0 + int(info[3])])
    bad_shape = tuple(int(s) for s in info[_BAD_SHAPE:_BAD_SHAPE + int(info[_BAD_NDIM])])
    return LoopStopped(_PROBLEMS[int(info[0])], int(info[1]), int(info[2]), first_shape,
                       bad_shape, states_are_list)


# Steps per compiled call are chosen so that one call takes about this long: the time loop returns
# to Python between blocks, where Ctrl-C is delivered (a compiled loop cannot see signals).
_BLOCK_SECONDS = 0.05
_FIRST_BLOCK_STEPS = 16


def run(step, x, states, constants, step_mask, options, on_step_error=None, on_loop_error=None):
    """Run the time loop (see the module docstring); ``(outputs, new_states)`` or None.

    ``step_result_type`` and ``result_problem`` must have accepted the step for these arrays.
    ``on_step_error(err, i)`` is called when the step raises at processing step ``i``, before
    the exception propagates unchanged; ``on_loop_error(err)`` when the loop itself does not
    compile for these types (once per process and types; None is returned every time).
    """
    from numba.core import types
    from numba.np.numpy_support import as_dtype

    # The loop reads x time-major: x[t] is the step input. A batch-major input is copied once to
    # (T, B, ...) C order, so every step gets a C-contiguous slice (Numba's `@` and array
    # expressions are faster on those, and its `@` would otherwise copy the slice every step).
    ensure_fresh_cache()  # the helpers inline kernels/cells/masking: drop stale cache files
    x = np.ascontiguousarray(x if options.time_major else np.swapaxes(x, 0, 1))
    n_states, n_constants = len(states), len(constants)
    cur = [np.array(s, order="C", copy=True) for s in states]
    nxt = [np.empty_like(s) for s in cur]
    has_mask = step_mask is not None
    mask = np.ascontiguousarray(step_mask, dtype=np.bool_) if has_mask else np.ones((1, 1), np.bool_)
    flags = Flags.of(options, has_mask)
    info = np.zeros(_INFO_SIZE, np.int64)

    step_sig = _step_signature(x, cur, constants)
    return_type = step.overloads[step_sig].signature.return_type
    out = np.empty((0, 0, 0), as_dtype(return_type[0].dtype))  # replaced at step 0
    prev = np.empty(0, out.dtype)
    fn_type = types.FunctionType(return_type(*step_sig))
    arg_types = (fn_type,) + tuple(numba.typeof(a) for a in (x, mask, flags, out, prev, 0, 0, *cur,
                                                              *nxt, *constants, info))
    loop = _compiled_loop(n_states, n_constants, arg_types, on_loop_error)
    if loop is None:
        return None

    T = x.shape[0]
    i, block = 0, min(T, _FIRST_BLOCK_STEPS)
    while i < T:
        end = min(T, i + block)
        started = time.perf_counter()
        try:
            out, prev, buffers = _interruptible(loop, step, x, mask, flags, out, prev, i, end,
                                                *cur, *nxt, *constants, info)
        except Exception as err:  # raised by the step: say where, as the generic loop does
            if on_step_error is not None:
                on_step_error(err, int(info[_RUNNING]))
            raise
        if info[0] != _OK:
            raise _stopped(info, isinstance(return_type[1], types.List))
        cur, nxt = list(buffers[:n_states]), list(buffers[n_states:])
        block = _next_block(block, end - i, time.perf_counter() - started)
        i = end

    rest = tuple(int(s) for s in info[_SHAPE0 + 1:_SHAPE0 + int(info[3])])
    return out.reshape(out.shape[:2] + rest), cur


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
