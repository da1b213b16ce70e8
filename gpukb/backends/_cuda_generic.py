"""The cuda backend's generic loop for any Python step function, with ONE masking kernel per step.

``run_masked`` is ``gpukb._rnn.run_generic`` itself, given ``FusedMasker`` in place of its
default masking (one ``xp.where`` per output leaf and per state leaf, plus a copy per output leaf
into the output buffer): ``gpukb.kernels.cuda.masking``'s kernel masks every leaf of a step in as
few launches as its parameter space allows. The loop, the step call and the checks are the shared
core's; the results are bitwise those of the default masking.

Every leaf is seen as a 2-D ``(B, F)`` array (``F`` = product of the non-batch axes; read-only
leaves may be copied by ``reshape``, written ones are fresh contiguous buffers). Leaves of a dtype
Numba cannot copy on the device are masked with ``xp.where`` instead (same results).
"""

from __future__ import annotations

import functools
import math

from gpukb.kernels.cuda.masking import MAX_ARRAYS_PER_LAUNCH, THREADS, kernel_dtype, masking_kernel

from .._rnn import run_generic


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
        self.out_fast = [kernel_dtype(o.dtype) for o in out_leaves]
        self.state_fast = [kernel_dtype(s.dtype) for s in call.state_leaves]
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
