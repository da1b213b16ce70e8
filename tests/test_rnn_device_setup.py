"""``prepare`` on GPU-like arrays: no read of device data back to the host (each such read waits for
the GPU; per-sample lengths given as a GPU array are the one documented exception), and a
batch-major mask becomes time-major in one copy, not one copy per time step.

``DeviceArray`` stands in for a GPU array: a NumPy array whose values cannot be read on the host.
"""

from __future__ import annotations

import numpy as np
import pytest

from gpukb._rnn import prepare


class HostRead(AssertionError):
    pass


class DeviceArray(np.ndarray):
    stores = 0  # slice assignments into any DeviceArray

    def _host_read(self, *args, **kwargs):
        raise HostRead("a device array's values were read on the host (a GPU sync)")

    min = max = item = tolist = __int__ = __float__ = __bool__ = __index__ = _host_read

    def __setitem__(self, key, value):
        type(self).stores += 1
        super().__setitem__(key, value)


class DeviceNamespace:
    """NumPy, except that every array it makes is a DeviceArray."""

    def __getattr__(self, name):
        return getattr(np, name)

    def asarray(self, value, dtype=None):
        return np.asarray(value, dtype=dtype).view(DeviceArray)

    def zeros(self, shape, dtype=None):
        return np.zeros(shape, dtype=dtype).view(DeviceArray)

    def empty(self, shape, dtype=None):
        return np.empty(shape, dtype=dtype).view(DeviceArray)


def step(x, states):
    return x, states


def device_problem(B=3, T=7):
    xp = DeviceNamespace()
    x = xp.asarray(np.random.default_rng(0).standard_normal((B, T, 2)))
    return xp, x, [xp.zeros((B, 2))]


def test_the_stand_in_detects_host_reads():
    xp, x, _ = device_problem()
    with pytest.raises(HostRead):
        int(xp.asarray([1, 2]).min())


def test_lengths_given_as_a_list_are_checked_on_the_host():
    xp, x, states = device_problem()
    call = prepare(step, x, states, input_length=[2, 0, 7], xp=xp)
    expected = np.arange(7)[:, None] < np.array([2, 0, 7])[None, :]
    np.testing.assert_array_equal(np.asarray(call.step_mask), expected)
    with pytest.raises(ValueError, match="must be >= 0"):
        prepare(step, x, states, input_length=[2, -1, 3], xp=xp)


def test_batch_major_mask_is_transposed_in_one_copy():
    xp, x, states = device_problem(B=3, T=7)
    mask = np.random.default_rng(1).random((3, 7)) < 0.5
    DeviceArray.stores = 0
    call = prepare(step, x, states, mask=xp.asarray(mask), xp=xp)
    np.testing.assert_array_equal(np.asarray(call.step_mask), mask.T)
    assert np.asarray(call.step_mask).flags.c_contiguous
    assert DeviceArray.stores == 1
