"""Large arrays of the CPU kernels reused from call to call instead of freshly allocated.

A fused backward allocates its work arrays (pre-activations and cell states kept by the forward,
the states before each step, the gates' cotangents: at LSTM (32, 100, 64, 128) about 16 MB) and
frees them when the pullback ends. glibc hands memory freed at the top of its heap back to the
operating system beyond a threshold, so the next call faulted every page in again: about 1,300
minor page faults a call, and 7-8 ms a call became 10-14 ms (2-core AMD EPYC, 2026-12-04). Here
such arrays are views of buffers the pool keeps: a buffer is handed out again once nothing
references it (its reference count is back to the pool's own), so an array a caller still holds
is never reused, and results stay what they are.

The pool keeps at most ``limit_bytes`` (``set_limit``; 0 turns it off); arrays under
``MIN_BYTES`` come from ``np.empty`` (malloc serves them from its heap without faults).
``clear()`` (``gpukb.clear_session``) lets every buffer go.
"""

from __future__ import annotations

import sys
import threading
from collections import OrderedDict

import numpy as np

MIN_BYTES = 1 << 20
DEFAULT_LIMIT_BYTES = 256 << 20

_lock = threading.Lock()
_buffers: OrderedDict = OrderedDict()   # id -> uint8 buffer, least recently handed out first
_limit = DEFAULT_LIMIT_BYTES
_held = 0    # bytes of every buffer in the pool, in use or not


def _references(buffers, key) -> int:
    """sys.getrefcount of ``buffers[key]``, always counted by this one function, so that what
    it gives for a buffer only the pool holds (_FREE_REFCOUNT) is measured, not assumed: how a
    local variable and a call's argument count differs between Python versions (3.14 borrows
    references from its stack). Every array made from a buffer holds one reference more."""
    buffer = buffers[key]
    return sys.getrefcount(buffer)


_FREE_REFCOUNT = _references({0: np.empty(1, np.uint8)}, 0)


def set_limit(nbytes: int) -> None:
    """At most ``nbytes`` in the pool (0: no pool); buffers over it are let go when free."""
    global _limit
    with _lock:
        _limit = max(0, int(nbytes))
        _shrink(0)


def limit() -> int:
    return _limit


def held_bytes() -> int:
    return _held


def clear() -> None:
    """Let every buffer go (arrays handed out stay valid: they keep their buffer alive)."""
    global _held
    with _lock:
        _buffers.clear()
        _held = 0


def empty(shape, dtype) -> np.ndarray:
    """``np.empty(shape, dtype)``, C-contiguous, from a free buffer of the same size when the pool
    has one."""
    dt = np.dtype(dtype)
    shape = tuple(int(n) for n in (shape if isinstance(shape, tuple) else (shape,)))
    nbytes = dt.itemsize
    for n in shape:
        nbytes *= n
    if nbytes < MIN_BYTES or _limit == 0:
        return np.empty(shape, dt)
    global _held
    with _lock:
        for key in _buffers:
            if _buffers[key].nbytes == nbytes and _references(_buffers, key) == _FREE_REFCOUNT:
                _buffers.move_to_end(key)
                return _buffers[key].view(dt).reshape(shape)   # the view's reference: in use
        if _held + nbytes > _limit:
            _shrink(nbytes)
        if _held + nbytes > _limit:
            return np.empty(shape, dt)
        buffer = np.empty(nbytes, np.uint8)
        _buffers[id(buffer)] = buffer
        _held += nbytes
        return buffer.view(dt).reshape(shape)


def _shrink(room: int) -> None:
    """Let free buffers go, least recently used first, until ``room`` more bytes fit (lock held)."""
    global _held
    for key in list(_buffers):
        if _held + room <= _limit:
            return
        if _references(_buffers, key) == _FREE_REFCOUNT:
            _held -= _buffers.pop(key).nbytes
