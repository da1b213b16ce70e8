"""The masking kernel of the generic loop: one launch per step masks every leaf at once.

The cuda backend runs any step function in gpukb's generic loop and hands it this kernel in place
of its default masking (``gpukb/backends/_cuda_generic.py``). For every output leaf it writes the
masked output (``kernels/cells/masking.output_at``: the step's output where valid, else zeros with
``zero_output_for_mask`` or the previous masked output) and, when ``write``, stores it into the
leaf's output buffer at ``slot``; for every state leaf the masked state (``masking.state_at``: the
new value where valid, else the held one). Selection and copies only: the results are bitwise
those of the generic loop's own masking, each leaf in its own dtype.

Every leaf is seen as a 2-D ``(B, F)`` array; thread ``i`` handles element ``i`` of the leaves laid
end to end (``ends``: the cumulative element counts). The kernel is generated for the number of
output and state leaves; a launch takes at most ``MAX_ARRAYS_PER_LAUNCH`` arrays (kernel parameter
space is limited). Leaves of a dtype Numba cannot copy on the device are not for this kernel
(``kernel_dtype``).
"""

from __future__ import annotations

import numpy as np

from ..cells import masking, register
from . import _runtime

MAX_ARRAYS_PER_LAUNCH = 24
THREADS = 128
_KERNEL_KINDS = set("biufc")  # bool, ints, unsigned, floats, complex


def kernel_dtype(dtype) -> bool:
    """True when the kernel can mask leaves of ``dtype``."""
    try:
        return np.dtype(dtype).kind in _KERNEL_KINDS
    except TypeError:
        return False


def _leaf_lines(k, start, first, dst, assign):
    """The branch of leaf ``k`` (elements ``[start, end{k})``): its element (r, f), then ``assign``."""
    return [f"    {'if' if first else 'elif'} i < end{k}:",
            f"        m = i - {start}",
            f"        F = {dst}.shape[1]",
            "        r = m // F",
            "        f = m - r * F",
            *assign]


def _source(n_out: int, n_state: int) -> str:
    """Kernel source for n_out output leaves (o, prev, dst, buf) and n_state state leaves
    (new, old, dst), then the ``ends`` of all of them, in that order."""
    params = ["mask", "t", "zero_out", "write", "slot", "otm"]
    params += [f"{name}{k}" for k in range(n_out) for name in "opdb"]
    params += [f"{name}{k}" for k in range(n_state) for name in "nse"]
    params += [f"end{k}" for k in range(n_out + n_state)]
    body = ["    i = cuda.grid(1)"]
    start = "0"
    for k in range(n_out):
        body += _leaf_lines(k, start, k == 0, f"d{k}", [
            f"        d{k}[r, f] = masking.output_at(mask[t, r], o{k}[r, f], p{k}[r, f], zero_out)",
            "        if write:",
            "            if otm:",
            f"                b{k}[slot, r, f] = d{k}[r, f]",
            "            else:",
            f"                b{k}[r, slot, f] = d{k}[r, f]"])
        start = f"end{k}"
    for k in range(n_state):
        kk = n_out + k
        body += _leaf_lines(kk, start, kk == 0, f"e{k}", [
            f"        e{k}[r, f] = masking.state_at(mask[t, r], n{k}[r, f], s{k}[r, f])"])
        start = f"end{kk}"
    return f"def masked_step({', '.join(params)}):\n" + "\n".join(body) + "\n"


def _build(n_out: int, n_state: int):
    register()
    cuda = _runtime.cuda()
    namespace = {"cuda": cuda, "masking": masking}
    exec(compile(_source(n_out, n_state), f"<gpukb masked_step {n_out}x{n_state}>", "exec"),
         namespace)
    return cuda.jit(namespace["masked_step"])


def masking_kernel(n_out: int, n_state: int):
    """The masking kernel for ``n_out`` output and ``n_state`` state leaves (compiled on its first
    launch)."""
    return _runtime.cached(("masked_step", n_out, n_state), lambda: _build(n_out, n_state))
