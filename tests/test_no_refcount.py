"""The compiled CPU loops run without Numba's reference counting (kernels/cpu/_common.NO_REFCOUNT):
with it, every row view a loop makes atomically increments and decrements its parent's count,
which took about half of one thread's time at small H and made two threads' counts fight over one
cache line. Checked on the LLVM IR of freshly compiled loops (cached code cannot be inspected),
in a child process with an empty cache folder."""

import json

from helpers import run_python

CHILD = """
import json, numpy as np, gpukb
from gpukb.kernels.cpu import backward, cells, _gemm
rng = np.random.default_rng(0)
cell = gpukb.cells.simple_rnn(rng.standard_normal((3, 8)), rng.standard_normal((8, 8)), None)
x, h0 = rng.standard_normal((2, 3, 3)), np.zeros((2, 8))
(last, outputs, states), pullback = gpukb.rnn_vjp(cell, x, [h0])
pullback(np.ones_like(outputs))
counted = {}
dispatchers = {f"time loop {k}": d for k, d in cells._loops.items()}
dispatchers.update({f"reverse loop {k}": d for k, d in backward._compiled.items()})
dispatchers["fused_rows"] = _gemm.fused_rows
for name, dispatcher in dispatchers.items():
    for signature in dispatcher.signatures:
        ir = dispatcher.inspect_llvm(signature)
        counted[name] = counted.get(name, 0) + ir.count("NRT_incref") + ir.count("NRT_decref")
print(json.dumps(counted))
"""


def test_compiled_loops_count_no_references(tmp_path):
    done = run_python(CHILD, home=tmp_path, env={"NUMBA_CACHE_DIR": str(tmp_path / "cache")})
    assert done.returncode == 0, done.stderr
    counted = json.loads(done.stdout.strip().splitlines()[-1])
    assert any(name.startswith("time loop") for name in counted), counted
    assert any(name.startswith("reverse loop") for name in counted), counted
    assert "fused_rows" in counted, counted
    assert all(count == 0 for count in counted.values()), counted
