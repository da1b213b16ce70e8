"""Gradients through ``rnn``: ``rnn_vjp``, its pullback and the step derivatives.

- ``frontend``: ``gpukb.rnn_vjp`` (picks the backend as ``gpukb.rnn`` does);
- ``pullback`` and ``cotangents``: the pullback every path returns, its argument checks, ``Grads``;
- ``generic``: the step protocol and the generic reverse loop (any backend, any step with a vjp);
- ``cell_steps``: the cells' step derivatives on whole arrays (the generic path for cells);
- ``fused_cpu``: the cpu backend's fused vjp of the cells (``gpukb.kernels.cpu.backward``);
- ``fused``: what the cpu and cuda fused vjps share (output cotangents, ``Grads``);
- ``residuals``: ``rnn_vjp(return_residuals=True)`` and ``rnn_pullback``'s rebuild;
- ``recompute``: ``rnn_vjp(recompute=True)``'s checks, and its replay for any other vjp plan.
"""

from .cotangents import Grads
from .frontend import rnn_pullback, rnn_residual_specs, rnn_vjp

__all__ = ["Grads", "rnn_pullback", "rnn_residual_specs", "rnn_vjp"]
