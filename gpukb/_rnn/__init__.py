"""The rnn semantics core that every backend shares.

``prepare`` checks and normalises the arguments of ``rnn`` once (raising before any step runs) and
returns an ``RnnCall``; ``run_generic`` runs the loop for any Python step function on any array
namespace that offers the small subset listed in ``loop``. A backend with a fused kernel takes the
``RnnCall`` from ``prepare`` and runs its own loop instead (and, where it calls a Python step
itself, notes the step's exceptions with ``note_step_error`` as the generic loop does).
"""

from .loop import WhereMasker, check_new_states, check_step_output, note_step_error, run_generic
from .validation import RnnCall, format_path, prepare

__all__ = ["RnnCall", "WhereMasker", "check_new_states", "check_step_output", "format_path", "note_step_error",
           "prepare", "run_generic"]
