"""Time gpukb's cuda backend against PyTorch's cuDNN LSTM/GRU: ``python -m gpukb.bench.cuda``.

For each cell (lstm, gru), shape (B, H) with D = H, T steps, float32 and each mask kind
(``none``; ``right``: right-padded per-sample lengths; ``random``: an arbitrary mask, which cuDNN
cannot express), it reports the median time of ``gpukb.rnn`` on every cell path that applies
(``auto`` and the path it picked, ``step``, ``persistent``, and ``auto`` with TF32 GEMMs) and of
``torch.nn.LSTM``/``GRU`` (cuDNN; right padding through ``pack_padded_sequence``, included in its
time) twice: in full FP32 (``cudnn_ms``, what gpukb computes by default) and with PyTorch's default
``torch.backends.cudnn.allow_tf32 = True`` (``cudnn_tf32_ms``). GPU times come from CUDA events on
the current stream. ``--json FILE`` also writes every figure with the device, driver and
library versions. Under the CUDA simulator it runs (slowly, on NumPy) as a smoke test.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import sys
import time

import numpy as np

DEFAULT_SHAPES = "1x256,32x512,64x1024,256x1024"


def _parse_shapes(text):
    shapes = []
    for item in text.split(","):
        b, h = item.lower().split("x")
        shapes.append((int(b), int(h)))
    return shapes


class _Timer:
    def __init__(self, xp, sim):
        self.xp, self.sim = xp, sim

    def median_ms(self, fn, repeat, warmup):
        for _ in range(warmup):
            fn()
        self._sync()
        times = []
        for _ in range(repeat):
            if self.sim:
                start = time.perf_counter()
                fn()
                times.append((time.perf_counter() - start) * 1e3)
            else:
                begin, end = self.xp.cuda.Event(), self.xp.cuda.Event()
                begin.record()
                fn()
                end.record()
                end.synchronize()
                times.append(self.xp.cuda.get_elapsed_time(begin, end))
        return statistics.median(times)

    def _sync(self):
        if not self.sim:
            self.xp.cuda.get_current_stream().synchronize()


def _versions(sim):
    info = {"python": platform.python_version(),
            "date": datetime.datetime.now().isoformat(timespec="seconds")}
    for name in ("numpy", "numba", "numba_cuda", "cupy", "torch", "gpukb"):
        module = sys.modules.get(name)
        if module is None:
            try:
                module = __import__(name)
            except Exception:  # noqa: BLE001 - not installed
                continue
        info[name] = getattr(module, "__version__", "?")
    info["simulator"] = sim
    if not sim:
        import cupy

        props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
        info["device"] = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
        info["driver"] = cupy.cuda.runtime.driverGetVersion()
        info["runtime"] = cupy.cuda.runtime.runtimeGetVersion()
    return info


def _masks(kind, B, T, rng):
    if kind == "none":
        return None, None
    lengths = rng.integers(T // 2, T + 1, size=B)
    if kind == "right":
        return np.arange(T)[None, :] < lengths[:, None], lengths
    return rng.random((B, T)) < 0.7, None


def run(cells=("lstm", "gru"), shapes=None, steps=100, repeat=20, warmup=3,
        masks=("none", "right", "random"), torch_too=True):
    import gpukb
    from gpukb.backends import _cuda_cells as cuda_cells
    from gpukb.kernels.cuda import _runtime

    sim = _runtime.simulator_enabled()
    backend = gpukb.get_backend("cuda")
    xp = backend.xp
    timer = _Timer(xp, sim)
    torch = None
    if torch_too and not sim:
        try:
            import torch
        except ImportError:
            torch = None
    rng = np.random.default_rng(0)
    rows = []
    for kind in cells:
        for B, H in shapes or _parse_shapes(DEFAULT_SHAPES):
            D, T, gates = H, steps, 4 if kind == "lstm" else 3
            kernel = (rng.standard_normal((D, gates * H)) / np.sqrt(D)).astype(np.float32)
            recurrent = (rng.standard_normal((H, gates * H)) / np.sqrt(H)).astype(np.float32)
            if kind == "lstm":
                cell = gpukb.cells.lstm(kernel, recurrent, np.zeros(4 * H, np.float32))
            else:
                cell = gpukb.cells.gru(kernel, recurrent, np.zeros((2, 3 * H), np.float32))
            cell = cell.converted(xp.asarray)
            x = xp.asarray(rng.standard_normal((B, T, D)).astype(np.float32))
            states = [xp.zeros((B, H), np.float32) for _ in cell.state_size]
            for mask_kind in masks:
                mask_np, lengths = _masks(mask_kind, B, T, rng)
                mask = None if mask_np is None else xp.asarray(mask_np)
                row = {"cell": kind, "B": B, "H": H, "D": D, "T": T, "mask": mask_kind}
                saved, saved_tf32 = backend.cell_path, backend.allow_tf32
                try:
                    for path in ("auto", "step", "persistent"):
                        backend.cell_path = path
                        gpukb.rnn(cell, x, states, mask=mask, backend="cuda")
                        chosen = cuda_cells.last_path()
                        label = "step" if chosen == "step" else "persistent"
                        if path == "persistent" and chosen == "step":
                            row["persistent_ms"] = None  # no tiling fits
                            continue
                        ms = timer.median_ms(lambda: gpukb.rnn(cell, x, states, mask=mask, backend="cuda"),
                                             repeat, warmup)
                        row[f"{path}_ms"] = ms
                        if path == "auto":
                            row["auto_path"] = label if label == "step" else repr(chosen)
                    backend.cell_path, backend.allow_tf32 = "auto", True
                    row["auto_tf32_ms"] = timer.median_ms(
                        lambda: gpukb.rnn(cell, x, states, mask=mask, backend="cuda"), repeat, warmup)
                finally:
                    backend.cell_path, backend.allow_tf32 = saved, saved_tf32
                if torch is not None:
                    for key, tf32 in (("cudnn_ms", False), ("cudnn_tf32_ms", True)):
                        row[key] = _time_torch(torch, timer, kind, B, T, D, H, mask_kind, lengths,
                                               repeat, warmup, tf32)
                rows.append(row)
                print(_format(row), flush=True)
    return {"info": _versions(sim), "rows": rows}


def _time_torch(torch, timer, kind, B, T, D, H, mask_kind, lengths, repeat, warmup, tf32):
    if mask_kind == "random":
        return None  # cuDNN has no arbitrary masks
    saved = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = tf32
    try:
        return _time_torch_module(torch, timer, kind, B, T, D, H, lengths, repeat, warmup)
    finally:
        torch.backends.cudnn.allow_tf32 = saved


def _time_torch_module(torch, timer, kind, B, T, D, H, lengths, repeat, warmup):
    module = (torch.nn.LSTM if kind == "lstm" else torch.nn.GRU)(D, H, batch_first=True).cuda()
    x = torch.randn(B, T, D, device="cuda")
    stream = torch.cuda.ExternalStream(timer.xp.cuda.get_current_stream().ptr)

    def forward():
        with torch.no_grad(), torch.cuda.stream(stream):
            if lengths is None:
                module(x)
            else:
                packed = torch.nn.utils.rnn.pack_padded_sequence(
                    x, torch.as_tensor(lengths), batch_first=True, enforce_sorted=False)
                module(packed)

    return timer.median_ms(forward, repeat, warmup)


def _format(row):
    def ms(key):
        value = row.get(key)
        return "   n/a" if value is None else f"{value:8.3f}"

    return (f"{row['cell']:5s} B={row['B']:4d} H={row['H']:5d} T={row['T']:4d} mask={row['mask']:6s} "
            f"auto {ms('auto_ms')} ({row.get('auto_path', '?')})  step {ms('step_ms')}  "
            f"persistent {ms('persistent_ms')}  cuDNN {ms('cudnn_ms')}  | TF32: auto {ms('auto_tf32_ms')}  "
            f"cuDNN {ms('cudnn_tf32_ms')}  [ms]")


def cuda_problem():
    """None when gpukb's cuda backend can run here (on a GPU, or in the simulator), else one
    sentence saying why not and what to install."""
    from gpukb import _dispatch

    record = {r.name: r for r in _dispatch.backend_records()}.get("cuda")
    if record is None:  # pragma: no cover - the backend ships with gpukb
        return "gpukb's cuda backend is not registered: reinstall gpukb."
    if record.availability:
        return None
    hint = record.backend.install_hint
    return f"the cuda backend is not available: {record.availability.reason}" + (
        f". {hint}" if hint else "")


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m gpukb.bench.cuda",
        description="Time gpukb's cuda backend against PyTorch's cuDNN LSTM/GRU (needs an "
                    "NVIDIA GPU, or NUMBA_ENABLE_CUDASIM=1 for a slow smoke run).")
    parser.add_argument("--cells", default="lstm,gru")
    parser.add_argument("--shapes", default=DEFAULT_SHAPES, help="comma-separated BxH, e.g. 1x256,64x1024")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--masks", default="none,right,random")
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--json", help="write every figure and the versions to this file")
    args = parser.parse_args(argv)
    problem = cuda_problem()
    if problem is not None:  # an expected situation on a machine without a GPU: no traceback
        print(f"{parser.prog}: {problem}", file=sys.stderr)
        return 1
    result = run(cells=args.cells.split(","), shapes=_parse_shapes(args.shapes), steps=args.steps,
                 repeat=args.repeat, warmup=args.warmup, masks=args.masks.split(","),
                 torch_too=not args.no_torch)
    print(json.dumps(result["info"]))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(result, handle, indent=2)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
