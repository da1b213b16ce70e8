"""What a fresh process's first fused CPU call does when Numba's disk cache holds the kernels:
it compiles nothing, loads one compiled function (the cell's time loop), and does not load
what only compiling needs (Numba's implementation registries, which import SciPy's linalg) nor
start Numba's own thread pool, nor Numba's runtime (NRT: the time loop does not use it; starting
it compiles its functions with LLVM). A later gradient call, whose kernels use NRT, starts it
and runs. Each would cost the first call tens to hundreds of milliseconds
(see the README's Reliability section for the measured times). Checked in fresh child processes;
nothing here is timed."""

import json

from helpers import run_python

FIRST_CALL = """
import gc, json, sys
import numpy as np
import gpukb
from numba.core import event

compiled = []
class Compiles(event.Listener):
    def on_start(self, ev):
        compiled.append(str(ev.data.get("dispatcher")))
    def on_end(self, ev):
        pass
event.register("numba:compile", Compiles())

rng = np.random.default_rng(0)
B, T, D, H = 4, 7, 3, 16
cell = gpukb.cells.lstm(rng.standard_normal((D, 4 * H), dtype=np.float32),
                        rng.standard_normal((H, 4 * H), dtype=np.float32),
                        np.zeros(4 * H, np.float32))
x = rng.standard_normal((B, T, D), dtype=np.float32)
h0 = np.zeros((B, H), np.float32)
gpukb.rnn(cell, x, [h0, h0])

from numba.core.dispatcher import Dispatcher
from numba.core.runtime import nrt
from numba.np.ufunc import parallel
loaded = sorted(d.py_func.__qualname__ for d in gc.get_objects()
                if isinstance(d, Dispatcher) and d.overloads)
runtime_started = nrt.rtsys._init
modules = [m for m in ("scipy.linalg", "numba.np.arraymath", "numba.np.linalg", "numba.cuda",
                       "numba.np.arrayobj") if m in sys.modules]
(_, outputs, _), pullback = gpukb.rnn_vjp(cell, x, [h0, h0])
grads = pullback(np.ones_like(outputs))
print(json.dumps(dict(
    compiled=compiled, loaded=loaded, numba_threads_started=parallel._is_initialized,
    runtime_started=runtime_started, runtime_after_gradients=nrt.rtsys._init,
    gradients_finite=bool(np.isfinite(grads.inputs).all() and grads.inputs.any()),
    modules=modules)))
"""


def _first_call(tmp_path):
    res = run_python(FIRST_CALL, home=tmp_path)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_a_warm_first_fused_call_compiles_nothing_and_loads_one_function(tmp_path):
    _first_call(tmp_path)   # fills Numba's cache if it is empty (compiles: seconds, once)
    got = _first_call(tmp_path)
    assert got["compiled"] == [], got
    assert got["loaded"] == ["_make_time_loop.<locals>.time_loop"], got
    assert got["modules"] == [], got
    assert got["numba_threads_started"] is False, got
    assert got["runtime_started"] is False, got
    assert got["runtime_after_gradients"] is True and got["gradients_finite"] is True, got
