"""Which CuPy arrays does torch.from_dlpack abort on? Each probe runs in a child process (an abort
kills it) and prints its array's shape, strides and flags first."""
import subprocess
import sys

PROBES = {
    "contiguous": "a = cp.arange(24.).reshape(2, 3, 4)",
    "negative stride": "a = cp.arange(24.).reshape(2, 3, 4)[::-1]",
    "negative stride, axis 1": "a = cp.arange(24.).reshape(2, 3, 4)[:, ::-1]",
    "transposed": "a = cp.arange(24.).reshape(2, 3, 4).swapaxes(0, 1)",
    "sliced": "a = cp.arange(48.).reshape(2, 3, 8)[:, :, :4]",
    "offset view": "a = cp.arange(24.).reshape(2, 3, 4)[1]",
}
SETUP = "import cupy as cp, torch\n"
REPORT = ("print(a.shape, a.strides, a.flags.c_contiguous, flush=True)\n"
          "t = torch.from_dlpack(a)\nprint('ok', tuple(t.stride()), bool((t.cpu().numpy() == cp.asnumpy(a)).all()), flush=True)\n")
LSTM = """
import numpy as np, gpukb
rng = np.random.default_rng(0)
B, T, D, H = 64, 9, 5, 96
cell = gpukb.cells.lstm(cp.asarray(rng.standard_normal((D, 4 * H))), cp.asarray(rng.standard_normal((H, 4 * H))),
                        cp.asarray(rng.standard_normal(4 * H)))
x = cp.asarray(rng.standard_normal((T, B, D)))
s = [cp.zeros((B, H)), cp.zeros((B, H))]
(_, out, states), _, res = gpukb.rnn_vjp(cell, x, s, time_major=True, return_residuals=True)
for name, a in [("outputs", out), ("h", states[0]), ("c", states[1])] + [(f"residual {i}", r) for i, r in enumerate(res)]:
    print(name, a.shape, a.strides, a.flags.c_contiguous, a.data.ptr % 256, flush=True)
    t = torch.from_dlpack(a)
    print("  ok", flush=True)
"""
for name, code in {**PROBES, "lstm B64 H96 float64 rnn_vjp results": LSTM}.items():
    body = SETUP + code + ("" if name.startswith("lstm") else "\n" + REPORT)
    done = subprocess.run([sys.executable, "-c", body], capture_output=True, text=True, timeout=120)
    print(f"== {name}: exit {done.returncode}")
    print(done.stdout.strip())
    if done.returncode:
        print("\n".join(done.stderr.strip().splitlines()[-6:]))
