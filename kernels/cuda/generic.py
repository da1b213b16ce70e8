"""The generic loop for any Python step function, with ONE masking kernel per step.

``run_masked`` is ``gpukb._rnn.run_generic`` itself, given ``FusedMasker`` in place of its
default masking (one ``xp.where`` per output leaf and per state leaf, plus a copy per output leaf
into the output buffer): a single generated kernel per step that, for every leaf at once, selects
the new value or the held one, keeps the previous masked output, and writes the output buffers.
The loop, the step call and the checks are the shared core's; the results are bitwise those of
the default masking (selection and copies only, each leaf in its own dtype).

Every leaf is seen as a 2-D ``(B, F)`` array (``F`` = product of the non-batch axes; read-only
leaves may be copied by ``reshape``, written ones are fresh contiguous buffers). The kernel is
generated for the number of output and state leaves; calls with many leaves are split into
several launches of at most ``MAX_ARRAYS_PER_LAUNCH`` arrays (kernel parameter space is limited).
Leaves of a dtype Numba cannot copy on the device fall back to ``xp.where`` for that leaf.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from gpukb._rnn import run_generic

from . import _runtime

MAX_ARRAYS_PER_LAUNCH = 24
THREADS = 128
_KERNEL_KINDS = set("biufc")  # bool, ints, unsigned, floats, complex


def _kernel_dtype(dtype) -> bool:
    try:
        return np.dtype(dtype).kind in _KERNEL_KINDS
    except TypeError:
        return False


def _source(n_out: int, n_state: int) -> str:
    """Kernel source for n_out output leaves (o, prev, dst, buf) and n_state state leaves
    (new, old, dst); ``ends`` are the cumulative element counts of the leaves, in that order."""
    params = ["mask", "t", "zero_out", "write", "slot", "otm"]
    body = ["    i = cuda.grid(1)"]
    ends = []
    for k in range(n_out):
        params += [f"o{k}", f"p{k}", f"d{k}", f"b{k}"]
    for k in range(n_state):
        params += [f"n{k}", f"s{k}", f"e{k}"]
    for k in range(n_out + n_state):
        ends.append(f"end{k}")
    params += ends
    start = "0"
    for k in range(n_out):
        body += [
            f"    {'if' if k == 0 else 'elif'} i < end{k}:",
            f"        m = i - {start}",
            f"        F = d{k}.shape[1]",
            "        r = m // F",
            "        f = m - r * F",
            "        if mask[t, r]:",
            f"            d{k}[r, f] = o{k}[r, f]",
            "        elif zero_out:",
            f"            d{k}[r, f] = 0",
            "        else:",
            f"            d{k}[r, f] = p{k}[r, f]",
            "        if write:",
            "            if otm:",
            f"                b{k}[slot, r, f] = d{k}[r, f]",
            "            else:",
            f"                b{k}[r, slot, f] = d{k}[r, f]",
        ]
        start = f"end{k}"
    for k in range(n_state):
        kk = n_out + k
        body += [
            f"    {'if' if kk == 0 else 'elif'} i < end{kk}:",
            f"        m = i - {start}",
            f"        F = e{k}.shape[1]",
            "        r = m // F",
            "        f = m - r * F",
            "        if mask[t, r]:",
            f"            e{k}[r, f] = n{k}[r, f]",
            "        else:",
            f"            e{k}[r, f] = s{k}[r, f]",
        ]
        start = f"end{kk}"
    return f"def masked_step({', '.join(params)}):\n" + "\n".join(body) + "\n"


def _build(n_out: int, n_state: int):
    cuda = _runtime.cuda()
    namespace = {"cuda": cuda}
    exec(compile(_source(n_out, n_state), f"<gpukb masked_step {n_out}x{n_state}>", "exec"), namespace)
    return cuda.jit(namespace["masked_step"])


def masking_kernel(n_out: int, n_state: int):
    return _runtime.cached(("masked_step", n_out, n_state), lambda: _build(n_out, n_state))


def _as_2d(a, batch):
    return a.reshape((batch, math.prod(tuple(a.shape[1:]))))


class _Masker:
    """Applies the mask of one step to all output and state leaves in as few launches as possible."""

    def __init__(self, call, launcher, out_leaves, buffers3d):
        self.call = call
        self.launcher = launcher
        self.xp = call.xp
        self.batch = call.batch_size
        self.mask = launcher.view(self.xp.ascontiguousarray(call.step_mask))
        self.out_fast = [_kernel_dtype(o.dtype) for o in out_leaves]
        self.state_fast = [_kernel_dtype(s.dtype) for s in call.state_leaves]
        self.buffers3d = buffers3d
        self.buffer_views = [launcher.view(b) if fast and b.size else None
                             for b, fast in zip(buffers3d, self.out_fast)]

    def apply(self, t, slot, write, out_leaves, prev, new_leaves, old_leaves):
        """(masked outputs, masked states), fresh arrays of the leaves' shapes and dtypes."""
        xp, batch, call = self.xp, self.batch, self.call
        zero_out = call.zero_output_for_mask
        masked_out, masked_states = [], []
        ends, total = [], 0  # the launch being gathered
        pending_out, pending_state = [], []

        def flush():
            nonlocal ends, total, pending_out, pending_state
            if pending_out or pending_state:
                args = [self.mask, t, zero_out, write, slot, call.time_major]
                for entry in pending_out:
                    args += entry
                for entry in pending_state:
                    args += entry
                args += ends
                kernel = masking_kernel(len(pending_out), len(pending_state))
                if total:
                    self.launcher.launch(kernel, (total + THREADS - 1) // THREADS, THREADS, *args)
            ends, total, pending_out, pending_state = [], 0, [], []

        view = self.launcher.view
        for k, (o, p) in enumerate(zip(out_leaves, prev)):
            dst = xp.empty(tuple(o.shape), dtype=o.dtype)
            masked_out.append(dst)
            if o.size == 0:  # nothing to select or store (and no device view of an empty array)
                continue
            if not self.out_fast[k]:
                keep = call.step_mask[t].reshape((batch,) + (1,) * (o.ndim - 1))
                value = xp.where(keep, o, xp.zeros_like(o) if zero_out else p)
                dst[...] = value
                if write:
                    self._store(k, slot, value)
                continue
            if (len(pending_out) + len(pending_state)) * 4 + 4 > MAX_ARRAYS_PER_LAUNCH:
                flush()
            total += o.size
            ends.append(total)
            pending_out.append([view(_as_2d(o, batch)), view(_as_2d(p, batch)), view(_as_2d(dst, batch)),
                                self.buffer_views[k]])
        for k, (n, s) in enumerate(zip(new_leaves, old_leaves)):
            dst = xp.empty(tuple(s.shape), dtype=s.dtype)
            masked_states.append(dst)
            if s.size == 0:
                continue
            if not self.state_fast[k]:
                keep = call.step_mask[t].reshape((batch,) + (1,) * (s.ndim - 1))
                dst[...] = xp.where(keep, n, s)
                continue
            if (len(pending_out) + len(pending_state)) * 4 + 3 > MAX_ARRAYS_PER_LAUNCH:
                flush()
            total += s.size
            ends.append(total)
            pending_state.append([view(_as_2d(n, batch)), view(_as_2d(s, batch)), view(_as_2d(dst, batch))])
        flush()
        return masked_out, masked_states

    def _store(self, k, slot, value):
        buf = self.buffers3d[k]
        flat = _as_2d(value, self.batch)
        if self.call.time_major:
            buf[slot] = flat
        else:
            buf[:, slot] = flat


class FusedMasker:
    """The ``masker`` that ``gpukb._rnn.run_generic`` uses on the cuda backend: one kernel per step."""

    def __init__(self, call, out_leaves, buffers, *, launcher):
        # (B, T, F) / (T, B, F) views of the freshly allocated (hence C-contiguous) buffers.
        buffers3d = [b.reshape(tuple(b.shape[:2]) + (math.prod(tuple(b.shape[2:])),)) for b in buffers]
        self._masker = _Masker(call, launcher, out_leaves, buffers3d)
        self.prev = [call.xp.zeros(tuple(leaf.shape), dtype=leaf.dtype) for leaf in out_leaves]

    def step(self, t, slot, write, out_leaves, new_leaves, states):
        self.prev, states = self._masker.apply(t, slot, write, out_leaves, self.prev, new_leaves, states)
        return states


def run_masked(call, launcher):
    """``run_generic`` with one fused masking kernel per step; NotImplemented without a mask."""
    if call.step_mask is None:
        return NotImplemented  # nothing to mask: the generic loop is already what we would run
    return run_generic(call, masker=functools.partial(FusedMasker, launcher=launcher))
