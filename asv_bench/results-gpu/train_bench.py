"""Forward + backward on the GPU: gpukb_torch.LSTM / GRU (gpukb's cuda backend) against
torch.nn.LSTM / GRU (cuDNN), float32, full FP32 on both sides, T steps, D = H.

    python asv_bench/results-gpu/train_bench.py [--shapes 8x256,64x512,256x1024] [--steps 100]

For each cell and (B, H): median ms (CUDA events) of one forward and ``backward`` of a fixed
projection of the outputs, for cuDNN (no mask), gpukb without a mask, gpukb with a random mask
(which cuDNN cannot express), and gpukb with ``recompute=True``; plus the largest gradient
difference against cuDNN (no mask), so a timing of a wrong result cannot pass unnoticed.
"""

from __future__ import annotations

import argparse
import statistics

import torch

import gpukb_torch


def _median_ms(fn, repeat, warmup=3):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeat):
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        fn()
        end.record()
        end.synchronize()
        times.append(begin.elapsed_time(end))
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", default="lstm,gru")
    parser.add_argument("--shapes", default="8x256,64x512,256x1024")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=10)
    args = parser.parse_args()
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    device = torch.device("cuda")
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}, T={args.steps}, D=H, "
          "float32, FP32; median ms of forward + backward")
    print(f"{'cell':5} {'B':>4} {'H':>5} {'cudnn':>8} {'gpukb':>8} {'masked':>8} {'recomp':>8} "
          f"{'gpukb/cudnn':>11} {'max|dgrad|':>10}")
    for cell in args.cells.split(","):
        ours_cls, torch_cls = {"lstm": (gpukb_torch.LSTM, torch.nn.LSTM),
                               "gru": (gpukb_torch.GRU, torch.nn.GRU)}[cell]
        for shape in args.shapes.split(","):
            B, H = (int(v) for v in shape.split("x"))
            torch.manual_seed(0)
            ours = ours_cls(H, H, device=device)
            theirs = torch_cls(H, H, device=device)
            theirs.load_state_dict(ours.state_dict())
            x = torch.randn(args.steps, B, H, device=device, requires_grad=True)
            dy = torch.randn(args.steps, B, H, device=device)
            mask = torch.rand(B, args.steps, device=device) < 0.7

            def step(module, **kwargs):
                x.grad = None
                module.zero_grad(set_to_none=True)
                output, _ = module(x, **kwargs)
                output.backward(dy)

            step(theirs)
            expected = [x.grad.clone(), *(p.grad.clone() for _, p in sorted(theirs.named_parameters()))]
            step(ours)
            got = [x.grad, *(p.grad for _, p in sorted(ours.named_parameters()))]
            diff = max(float((a - b).abs().max()) for a, b in zip(got, expected))
            cudnn = _median_ms(lambda: step(theirs), args.repeat)
            plain = _median_ms(lambda: step(ours), args.repeat)
            masked = _median_ms(lambda: step(ours, mask=mask), args.repeat)
            ours.recompute = True
            recomputed = _median_ms(lambda: step(ours), args.repeat)
            print(f"{cell:5} {B:>4} {H:>5} {cudnn:8.3f} {plain:8.3f} {masked:8.3f} "
                  f"{recomputed:8.3f} {plain / cudnn:11.2f} {diff:10.2e}", flush=True)


if __name__ == "__main__":
    main()
