"""A stand-in for CuPy and gpukb's cuda backend, for the tests of gpukb-dask's non-NumPy path.

``DeviceArray`` holds NumPy data but is not a NumPy array, and refuses to become one silently (as
CuPy does); ``DeviceBackend`` (backend ``fakedevice``) owns it and runs ``gpukb.rnn`` on the data
with the cpu backend, recording what each call got. gpukb finds the backend through an entry
point (``install`` writes the dist-info), as it finds any plugin; importable on the test cluster's
workers (they get the test process's sys.path).
"""

from __future__ import annotations

import os
import sys
import textwrap

import numpy as np
import optree

import gpukb

CALLS: list = []  # (pid, batch size, the types of every array argument) per rnn call here


def calls() -> list:
    return list(CALLS)


class DeviceArray:
    def __init__(self, data):
        self.data = np.asarray(data)

    shape = property(lambda self: self.data.shape)
    dtype = property(lambda self: self.data.dtype)
    ndim = property(lambda self: self.data.ndim)

    def __getitem__(self, index):
        return DeviceArray(self.data[index])

    def astype(self, dtype, **kwargs):
        return DeviceArray(self.data.astype(dtype))

    # What gpukb's validation does to a mask (as CuPy has them): Dask applies each to the meta
    # too, and keeps the chunk type only when the result is a DeviceArray.
    def __ne__(self, other):
        return DeviceArray(self.data != other)

    def reshape(self, *shape, **kwargs):
        return DeviceArray(self.data.reshape(*shape, **kwargs))

    def transpose(self, *axes):   # np.transpose (Dask's .T on the meta) calls it
        return DeviceArray(self.data.transpose(*axes))

    T = property(lambda self: DeviceArray(self.data.T))

    def __array_function__(self, func, types, args, kwargs):
        # NumPy's functions on DeviceArrays return DeviceArrays (as CuPy's __array_function__):
        # Dask calls them on the meta (zeros_like, asanyarray(..., like=)) to learn the chunk type.
        def unwrap(value):
            if isinstance(value, DeviceArray):
                return value.data
            if isinstance(value, (list, tuple)):
                return type(value)(unwrap(v) for v in value)
            return value

        kwargs = {k: unwrap(v) for k, v in kwargs.items()}
        result = func(*unwrap(args), **kwargs)
        return DeviceArray(result) if isinstance(result, np.ndarray) else result

    def __array__(self, dtype=None, copy=None):
        raise TypeError("DeviceArray: no implicit conversion to NumPy (as CuPy)")


class DeviceBackend(gpukb.Backend):
    name = "fakedevice"
    array_types = (f"{__name__}:DeviceArray",)

    def _load_xp(self):
        return np  # never used: rnn is taken over

    def asarray(self, value):
        return DeviceArray(np.asarray(value))

    def to_numpy(self, array):
        return array.data

    def rnn(self, step_function, inputs, initial_states, **options):
        arrays = optree.tree_leaves((inputs, initial_states, options.get("mask"),
                                     options.get("input_length"), options.get("constants")))
        batch = optree.tree_leaves(inputs)[0].shape[1 if options.get("time_major") else 0]
        CALLS.append((os.getpid(), batch, sorted({type(a).__name__ for a in arrays if hasattr(a, "shape")})))

        def unwrap(tree):
            return optree.tree_map(lambda a: a.data if isinstance(a, DeviceArray) else a, tree)

        options = {k: unwrap(v) for k, v in options.items()}
        result = gpukb.rnn(step_function, unwrap(inputs), unwrap(initial_states), backend="cpu", **options)
        return optree.tree_map(DeviceArray, result)


def install(folder) -> None:
    """Make this backend discoverable from ``folder`` (put it on sys.path, then refresh)."""
    info = os.path.join(folder, "gpukb_dask_fake_device-0.1.dist-info")
    os.makedirs(info, exist_ok=True)
    with open(os.path.join(info, "METADATA"), "w") as f:
        f.write("Metadata-Version: 2.1\nName: gpukb-dask-fake-device\nVersion: 0.1\n")
    with open(os.path.join(info, "entry_points.txt"), "w") as f:
        f.write(textwrap.dedent(f"""
            [gpukb.backends]
            fakedevice = {__name__}:DeviceBackend
        """))


def use(folder) -> None:
    """In this process: discover the backend installed in ``folder`` (on a worker: client.run)."""
    if folder not in sys.path:
        sys.path.insert(0, folder)
    CALLS.clear()
    gpukb.refresh_backends()


def forget(folder) -> None:
    while folder in sys.path:
        sys.path.remove(folder)
    gpukb.refresh_backends()
