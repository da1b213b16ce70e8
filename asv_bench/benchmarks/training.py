"""Time of a training step's recurrent part: ``gpukb.rnn_vjp`` and its pullback (backend x cell x
size x mask kind), and the PyTorch drop-in's forward and ``.backward`` (gpukb-torch, CPU)."""

import numpy as np

from ._common import BACKENDS, MASKS, SIZES, Case, parse_size

FUSED_CELLS = ["lstm", "gru", "simple_rnn"]


class TimeRnnVjp:
    """One forward that keeps what the backward needs (``gpukb.rnn_vjp``) and one pullback of
    every step's outputs: the whole recurrent part of a training step. Compilation runs in
    ``setup``; a gpukb without ``rnn_vjp`` (an older commit) or a backend that cannot run here is
    skipped."""

    params = (BACKENDS, FUSED_CELLS, SIZES, MASKS)
    param_names = ["backend", "cell", "size", "mask"]
    timeout = 300

    def setup(self, backend, cell, size, mask):
        import gpukb

        if not hasattr(gpukb, "rnn_vjp"):
            raise NotImplementedError("this gpukb has no rnn_vjp")
        self.case = Case(backend, cell, size, mask)
        self.rnn_vjp = gpukb.rnn_vjp
        (_, outputs, _), _ = self.run_forward()
        self.cotangent = self.case.convert(np.ones(tuple(outputs.shape), np.float32))
        self.time_rnn_vjp(backend, cell, size, mask)   # warm-up: compile outside the timing

    def run_forward(self):
        c = self.case
        return self.rnn_vjp(c.step, c.inputs, c.states, mask=c.mask, backend=c.backend_name)

    def time_rnn_vjp(self, backend, cell, size, mask):
        _, pullback = self.run_forward()
        pullback(self.cotangent)
        self.case.sync()


class TimeTorchDropin:
    """``gpukb_torch.LSTM``/``GRU`` (the drop-in for torch.nn's, batch first, float32, CPU):
    forward and ``.backward`` of a fixed cotangent, gradients of the input and every weight.
    Skipped where torch or gpukb-torch is not installed."""

    params = (["lstm", "gru"], SIZES)
    param_names = ["cell", "size"]
    timeout = 300

    def setup(self, cell, size):
        try:
            import torch
            import gpukb_torch
        except ImportError as error:
            raise NotImplementedError(f"needs torch and gpukb-torch: {error}")
        B, T, D, H = parse_size(size)
        torch.manual_seed(0)
        module = {"lstm": gpukb_torch.LSTM, "gru": gpukb_torch.GRU}[cell]
        self.module = module(D, H, batch_first=True)
        self.x = torch.randn(B, T, D)
        self.cotangent = torch.randn(B, T, H)
        self.time_dropin_step(cell, size)   # warm-up: compile outside the timing

    def time_dropin_step(self, cell, size):
        x = self.x.clone().requires_grad_(True)
        self.module.zero_grad(set_to_none=True)
        output, _ = self.module(x)
        output.backward(self.cotangent)


class TimeShortCall:
    """A frozen cell's repeated ``gpukb.rnn`` call on a short sequence, where a call's own cost
    (checks, plan, buffers) weighs most: what a server scoring one short request at a time pays
    (CPU)."""

    params = (FUSED_CELLS, ["1x10x16x32", "4x20x16x32"])
    param_names = ["cell", "size"]

    def setup(self, cell, size):
        self.case = Case("cpu", cell, size, "none")
        if hasattr(self.case.step, "freeze"):
            self.case.step.freeze()
        self.case.run()

    def time_short_call(self, cell, size):
        self.case.run()

