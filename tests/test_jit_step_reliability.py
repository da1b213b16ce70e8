"""jit_step under failure: any compile error falls back per dtype, no wait on Numba's compiler
lock once compiled (threads, fork), Ctrl-C arrives as KeyboardInterrupt within a second, and a new
step function does not recompile the fused loop.

Hangs and signals are tested in child interpreters with timeouts, so the suite cannot hang.
"""

import signal
import subprocess
import sys
import textwrap
import time
import warnings

import numba
import numba.np.linalg
import numpy as np
import pytest

import gpukb
from gpukb import _rnn
from gpukb.kernels.cpu import jit_loop

from helpers import run_python
from test_jit_step import assert_same, planned


def _matmul_step(x, states):
    h, W, U = states
    h = np.tanh(x @ W + h @ U)
    return h, (h,)


def _copy_of(function):
    return type(function)(function.__code__, function.__globals__, function.__name__)


def _problem(dtype=np.float64, B=3, T=5, D=4, H=6, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((B, T, D)).astype(dtype)
    h0 = rng.standard_normal((B, H)).astype(dtype)
    W = rng.standard_normal((D, H)).astype(dtype)
    U = rng.standard_normal((H, H)).astype(dtype)
    return x, [h0], [W, U]


def test_any_compile_failure_falls_back_once_with_a_warning(monkeypatch):
    # What a missing SciPy does to `@` inside Numba: an ImportError while compiling, which used to
    # escape from gpukb.rnn as an 80-line Numba traceback.
    def no_blas():
        raise ImportError("scipy 0.16+ is required for linear algebra")

    monkeypatch.setattr(numba.np.linalg, "ensure_blas", no_blas)
    step = gpukb.jit_step(_copy_of(_matmul_step))  # a new function: nothing compiled for it yet
    x, states, constants = _problem()
    with pytest.warns(RuntimeWarning) as record:
        got = gpukb.rnn(step, x, states, constants=constants)
    assert len(record) == 1
    message = str(record[0].message)
    assert "could not compile" in message and "float64[2d]" in message and "scipy" in message
    assert record[0].filename == __file__  # points at the caller's line, not at gpukb
    assert_same(got, _rnn.run_generic(_rnn.prepare(_matmul_step, x, states, constants=constants)))
    assert isinstance(step.compile_error, ImportError)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning, no second compile attempt
        with planned() as taken:
            gpukb.rnn(step, x, states, constants=constants)
    assert taken == ["generic"]


def test_fallback_is_per_dtype():
    @gpukb.jit_step
    def step(x, states):
        h = states[0] * 0.5 + x[:, :1]
        return h, (h,)

    x = np.ones((2, 3, 4))
    h = np.zeros((2, 4))
    with pytest.warns(RuntimeWarning, match=r"float16\[2d\]"):  # Numba has no float16 arithmetic
        gpukb.rnn(step, x.astype(np.float16), [h.astype(np.float16)])
    assert not step.compiled
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with planned() as taken:
            got = gpukb.rnn(step, x, [h])  # float64 still runs compiled, in the fused loop
    assert taken == ["jit_loop"]
    assert_same(got, _rnn.run_generic(_rnn.prepare(step.py_func, x, [h])))


def _steps_scaled_by(k):
    def step(x, states):
        h = states[0] * k + x[:, :1]
        return h, (h,)
    return step


def test_a_new_step_function_reuses_the_compiled_loop():
    # The loop takes the step as a function pointer: a new step function with the same types
    # compiles only itself (it used to compile, and keep, a whole new loop: 2.5x the memory).
    x = np.ones((2, 3, 4))
    h = np.zeros((2, 4))
    first = gpukb.jit_step(_steps_scaled_by(0.5))
    gpukb.rnn(first, x, [h])
    loops = dict(jit_loop._loops)
    second = gpukb.jit_step(_steps_scaled_by(0.25))
    with planned() as taken:
        got = gpukb.rnn(second, x, [h])
    assert taken == ["jit_loop"]
    assert jit_loop._loops == loops and all(len(loop.overloads) == 1 for loop in loops.values())
    assert_same(got, _rnn.run_generic(_rnn.prepare(second.py_func, x, [h])))


@pytest.mark.parametrize("options", [{}, {"go_backwards": True, "mask": "random"},
                                     {"return_all_outputs": False, "time_major": True},
                                     {"zero_output_for_mask": True, "mask": "random"}])
def test_results_do_not_depend_on_time_blocks(monkeypatch, options):
    # The loop returns to Python between blocks of steps (for Ctrl-C); one step per block must
    # give the same bits as the generic loop.
    monkeypatch.setattr(jit_loop, "_FIRST_BLOCK_STEPS", 1)
    monkeypatch.setattr(jit_loop, "_BLOCK_SECONDS", 0.0)
    rng = np.random.default_rng(1)
    B, T = 3, 9
    options = dict(options)
    x = rng.standard_normal((T, B, 2) if options.get("time_major") else (B, T, 2))
    if options.get("mask") == "random":
        options["mask"] = rng.random((B, T)) < 0.6
    step = gpukb.jit_step(_steps_scaled_by(0.5))
    h = rng.standard_normal((B, 2))
    calls = []
    original = jit_loop._interruptible
    monkeypatch.setattr(jit_loop, "_interruptible", lambda *a: calls.append(1) or original(*a))
    with planned() as taken:
        got = gpukb.rnn(step, x, [h], **options)
    assert taken == ["jit_loop"] and len(calls) == T
    assert_same(got, _rnn.run_generic(_rnn.prepare(step.py_func, x, [h], **options)))


_WARM_UP = """
import os, sys, threading, numpy as np, gpukb
from numba.core.compiler_lock import global_compiler_lock

@gpukb.jit_step
def step(x, states):
    h = np.tanh(states[0] * 0.5 + x)
    return h, (h,)

rng = np.random.default_rng(0)
x = rng.standard_normal((2, 5, 3))
h0 = np.zeros((2, 3))
cell = gpukb.cells.lstm(rng.standard_normal((3, 8)), rng.standard_normal((2, 8)), np.zeros(8))
want_step = gpukb.rnn(step, x, [h0])[1]
want_cell = gpukb.rnn(cell, x, [np.zeros((2, 2)), np.zeros((2, 2))])[1]

def compiled_calls_agree():
    return (np.array_equal(gpukb.rnn(step, x, [h0])[1], want_step)
            and np.array_equal(gpukb.rnn(cell, x, [np.zeros((2, 2)), np.zeros((2, 2))])[1], want_cell))

# Another thread holds Numba's compiler lock, as a thread compiling a new function does.
held, release = threading.Event(), threading.Event()
def compiling():
    with global_compiler_lock:
        held.set()
        release.wait()
threading.Thread(target=compiling, daemon=True).start()
held.wait()
"""


def test_compiled_calls_do_not_wait_for_another_threads_compile(tmp_path):
    code = _WARM_UP + textwrap.dedent("""
        result = []
        worker = threading.Thread(target=lambda: result.append(compiled_calls_agree()), daemon=True)
        worker.start()
        worker.join(30)
        print("finished" if result else "blocked", result)
        os._exit(0)
    """)
    result = run_python(code, home=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["finished", "[True]"]


def test_a_process_forked_during_a_compile_runs_compiled_steps(tmp_path):
    code = _WARM_UP + textwrap.dedent("""
        import time
        pid = os.fork()
        if pid == 0:  # the child inherits the lock, held by a thread it does not have
            os._exit(0 if compiled_calls_agree() else 3)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                print("child exit", os.waitstatus_to_exitcode(status))
                break
            time.sleep(0.05)
        else:
            os.kill(pid, 9)
            print("child hung")
        os._exit(0)
    """)
    result = run_python(code, home=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "child exit 0"


_LONG_LOOP = """
import signal, sys, time, numpy as np, gpukb
signal.signal(signal.SIGINT, signal.default_int_handler)   # even if the parent ignores SIGINT

@gpukb.jit_step
def step(x, states):
    h, n = states
    for _ in range(n[0]):  # a step slow enough that the loop runs for many seconds
        h = h * 0.5 + x
    return h, (h,)

def run(T):
    x = np.ones((1, T, 4))
    return gpukb.rnn(step, x, [np.zeros((1, 4))], constants=[np.array([400])])

want = run(50)
print("ready", flush=True)
try:
    run(2_000_000)
    print("finished", flush=True)
except BaseException as err:
    caught = time.time()
    ok = all(np.array_equal(a, b) for a, b in zip(run(50)[:2], want[:2]))
    print(type(err).__name__, repr(err.__cause__), caught, "next-call-ok" if ok else "next-call-wrong",
          flush=True)
"""


def test_ctrl_c_in_a_jit_step_loop_is_a_prompt_keyboard_interrupt(tmp_path):
    script = tmp_path / "long_loop.py"
    script.write_text(_LONG_LOOP)
    child = subprocess.Popen([sys.executable, str(script)], cwd=tmp_path, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready", child.stderr.read()
        time.sleep(1.0)  # well inside the loop
        sent = time.time()
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=60)
    finally:
        child.kill()
    name, cause, caught, next_call = out.split()
    assert (name, cause, next_call) == ("KeyboardInterrupt", "None", "next-call-ok"), out + err
    assert float(caught) - sent < 1.0


@numba.njit
def _raises_at_third_call(x, states):
    h, count = states
    count[0] += 1
    if count[0] == 3:
        raise ZeroDivisionError("from the step")
    return h + x, (h + x,)


@pytest.mark.skipif(sys.version_info < (3, 11), reason="exception notes (PEP 678) need Python 3.11")
def test_an_error_of_a_compiled_step_says_where_it_was_raised():
    x = np.ones((2, 5, 3))
    with planned() as taken, pytest.raises(ZeroDivisionError, match="from the step") as info:
        gpukb.rnn(_raises_at_third_call, x, [np.zeros((2, 3))], constants=[np.zeros(1, np.int64)],
                  go_backwards=True)
    assert taken == ["jit_loop"]
    assert info.value.__notes__ == [
        "gpukb.rnn: raised by step_function at processing step i=2 of T=5 (input time index t=2, "
        "go_backwards) on backend 'cpu'."]
