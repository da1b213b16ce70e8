"""The PyTorch drop-in's eager route on CUDA tensors, against its custom operators (owed to a GPU
session; README beside this script, "Next GPU session").

The eager route (gpukb_torch/_direction.py) runs the operators' own functions without torch's
operator machinery; ``eager`` lets only CPU tensors take it because it has not run on a GPU. This
lets CUDA tensors through for the check (``_direction.EAGER_DEVICES``), then for every cell and size: the outputs, final states
and every gradient on both routes must be equal bit for bit, and the time of a forward and
``.backward`` on each (CUDA-synchronised, medians of the rounds, the routes in turn).

    python asv_bench/results-gpu/dropin_eager_check.py [--device cuda] [--rounds 20]

``--device cpu`` runs the same comparison on the CPU (where the eager route is the default): a
check of this script without a GPU.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import gpukb_torch
from gpukb_torch import _direction

SIZES = [(8, 100, 64, 256), (32, 100, 128, 512), (64, 50, 256, 1024)]   # (B, T, D, H)


def _step(module, x, cotangent, sync):
    x = x.clone().requires_grad_(True)
    module.zero_grad(set_to_none=True)
    output, hidden = module(x)
    output.backward(cotangent)
    sync()
    states = list(hidden) if isinstance(hidden, tuple) else [hidden]
    return [output.detach(), *(s.detach() for s in states), x.grad,
            *(p.grad for _, p in sorted(module.named_parameters()))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    device = args.device
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    rule = _direction.eager
    _direction.EAGER_DEVICES = (device,)   # the eager route's own rule, with this device let in
    routes = {"operators": lambda tensors: False, "eager": rule}
    failures = 0
    print(f"torch {torch.__version__}, device {device}"
          + (f" ({torch.cuda.get_device_name()})" if device == "cuda" else ""))
    print(f"{'cell':5s} {'(B, T, D, H)':20s} {'operators ms':>12s} {'eager ms':>9s} "
          f"{'eager/ops':>9s}  same bits")
    try:
        for mode, cls in (("lstm", gpukb_torch.LSTM), ("gru", gpukb_torch.GRU)):
            for B, T, D, H in SIZES:
                torch.manual_seed(0)
                module = cls(D, H, batch_first=True, device=device)
                x = torch.randn(B, T, D, device=device)
                cotangent = torch.randn(B, T, H, device=device)
                results, times = {}, {name: [] for name in routes}
                for name, route in routes.items():   # warm-up (compiles), and the results
                    _direction.eager = route
                    results[name] = _step(module, x, cotangent, sync)
                same = all(torch.equal(a, b) for a, b in
                           zip(results["operators"], results["eager"]))
                failures += not same
                for _ in range(args.rounds):
                    for name, route in routes.items():
                        _direction.eager = route
                        start = time.perf_counter()
                        _step(module, x, cotangent, sync)
                        times[name].append(time.perf_counter() - start)
                ops, eager = (1e3 * statistics.median(times[n]) for n in routes)
                print(f"{mode:5s} {str((B, T, D, H)):20s} {ops:12.3f} {eager:9.3f} "
                      f"{eager / ops:9.2f}  {same}")
    finally:
        _direction.eager = rule
        _direction.EAGER_DEVICES = ()
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
