"""``rnn_vjp(..., recompute=True)``: a pullback that holds only the call's arguments and the
outputs, and runs the forward again when it is called (docs: the README's "Gradients").

Each path decides what "only the outputs" means for it (``Backend.run_vjp_plan_recomputing``):

- cpu cells (``fused_cpu.fused_cell_vjp(call, recompute=True)``): every step's output is kept, the
  pre-activations and cell states are not; each pullback call runs the fused forward once more
  to fill them, then frees them;
- cuda cells: their vjp already keeps only every step's output and rebuilds the pre-activations
  in the pullback, so ``recompute`` changes nothing there (nothing more can be dropped);
- the generic path (``generic.generic_vjp(..., recompute=True)``): the tape of step pullbacks is
  not kept; each pullback call records it again (one more forward) and drops it;
- any other vjp plan (a plugin's fused vjp, which cannot be told what to keep): ``replay`` here:
  the forward's own pullback is dropped at once, and each pullback call runs the vjp again.

In every case the values and gradients are those of ``recompute=False``: the same kernels run on
the same arguments.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .._rnn import RnnCall
from .pullback import Pullback


def check_flags(return_residuals: Any, recompute: Any) -> None:
    """TypeError for a flag that is not a bool; ValueError for both at once (nothing run yet):
    a recomputing pullback keeps no residuals to return."""
    for name, value in (("return_residuals", return_residuals), ("recompute", recompute)):
        if not isinstance(value, (bool, np.bool_)):
            raise TypeError(f"rnn_vjp: {name} must be a bool, got {type(value).__name__} "
                            f"{value!r}.")
    if return_residuals and recompute:
        raise ValueError(
            "rnn_vjp: return_residuals=True and recompute=True cannot be combined: a recomputing "
            "pullback keeps nothing beyond the arguments and outputs, so it has no residuals to "
            "return; use one or the other (rnn_pullback rebuilds a pullback from the residuals "
            "of a call made with return_residuals=True alone)."
        )


def replay(backend: Any, plan: Any, call: RnnCall, given: tuple) -> tuple[tuple, Pullback]:
    """``(rnn's result, pullback)`` for any vjp ``plan``: the vjp's forward runs now and what its
    pullback keeps is dropped; each pullback call runs the vjp again and uses its backward."""
    result, _ = backend.run_vjp_plan(plan, call, given)

    def backward(d_out: list, d_last: list, d_states: list) -> Any:
        return backend.run_vjp_plan(plan, call, given)[1].backward(d_out, d_last, d_states)

    return result, Pullback(call, result, backward, given)
