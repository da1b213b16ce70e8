"""What ``gpukb bench`` times: the base class of an implementation, and the gpukb backends.

An implementation is prepared once (``prepare``: import its library, or raise ``Skipped`` with the
reason) and then built per problem (``build``: a ``Runnable`` whose ``run`` does one forward pass,
synchronised, and whose ``to_numpy`` turns the result into a NumPy array for the error check).
Every *available* gpukb backend is an implementation (``gpukb[cpu]``, ``gpukb[cuda]``, plugins);
the peers are in ``gpukb.bench.peers``. A plugin backend that only runs gpukb's generic Python loop
(no fused kernel of its own) is left out of the default run: its time is that loop's on the
plugin's arrays, not a gpukb kernel's. ``--backends NAME`` still runs it, labelled "generic loop".
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np


class Skipped(Exception):
    """An implementation that cannot run here; the message is the reason shown to the user."""


@dataclass
class Runnable:
    """One implementation built for one problem."""

    run: Callable[[], Any]                                   # one synchronised forward pass
    # run()'s result -> NumPy: (B, T, H) for a workload, the list of outputs for a saved model
    to_numpy: Callable[[Any], Any] = np.asarray


@dataclass
class Implementation:
    """Base class. ``key`` names it on the command line and in the JSON; ``kind`` is ``"gpukb"``
    or ``"peer"``; ``threads`` says how many threads it computes with (set by ``prepare``)."""

    key: str
    kind: str = "peer"
    threads: str = ""
    versions: dict = field(default_factory=dict)
    workloads: tuple = ("lstm", "gru", "simple_rnn")

    def label(self, workload: str) -> str:
        return self.key

    def prepare(self) -> None:
        """Import what is needed; raise ``Skipped(reason)`` when it cannot run here."""

    def unsupported(self, workload: str, dtype: str) -> str | None:
        """Why this (prepared) implementation cannot run ``workload`` in ``dtype`` (shown as
        "n/a" with the reason, never run in another type), or None when it can."""
        return None

    def build(self, problem) -> Runnable:
        raise NotImplementedError


# --------------------------------------------------------------------------------------------
# gpukb backends
# --------------------------------------------------------------------------------------------

def synchronizer(backend) -> Callable[[], None]:
    """What waits for a backend's queued work: the backend's own ``synchronize()`` if it has one,
    CuPy's current stream when the backend computes with CuPy (``cuda``), else nothing."""
    sync = getattr(backend, "synchronize", None)
    if callable(sync):
        return sync
    if getattr(backend.xp, "__name__", "") == "cupy":
        import cupy

        def cupy_sync():
            cupy.cuda.get_current_stream().synchronize()

        return cupy_sync
    return lambda: None


def _numba_threads() -> str:
    try:
        import numba

        return (f"Numba {numba.get_num_threads()} thread(s) (NUMBA_NUM_THREADS; default: all "
                f"{os.cpu_count()} cores); NumPy's BLAS where the generic loop runs")
    except Exception as error:  # pragma: no cover - numba is a dependency
        return f"unknown ({error})"


class GpukbBackend(Implementation):
    """``gpukb.rnn(cell, inputs, states, backend=name)`` with the inputs, states and cell weights
    already converted to the backend's arrays (conversion is outside the timed region)."""

    def __init__(self, name: str):
        super().__init__(key=f"gpukb[{name}]", kind="gpukb")
        self.name = name
        self.backend: Any = None  # the gpukb.Backend, once prepared
        self.generic_loop = False

    def label(self, workload: str) -> str:
        return f"{self.key} generic loop" if self.generic_loop else self.key

    def prepare(self) -> None:
        import gpukb
        from gpukb import _dispatch

        records = {r.name: r for r in _dispatch.backend_records()}
        record = records.get(self.name)
        if record is None:
            raise Skipped(f"no backend called {self.name!r} is installed")
        if not record.availability:
            raise Skipped(f"unavailable: {record.availability.reason}")
        if getattr(record.backend, "simulated", False):
            raise Skipped("it runs on Numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1): "
                          "its timings say nothing about a GPU")
        self.backend = record.backend
        self.record = record
        self.generic_loop = runs_generic_loop_only(record.backend)
        self.versions = {"gpukb": gpukb.__version__}
        if self.name == "cpu":
            import numba

            self.versions["numba"] = numba.__version__
            self.threads = _numba_threads()
        elif getattr(self.backend.xp, "__name__", "") == "cupy":
            import cupy

            self.versions["cupy"] = cupy.__version__
            self.threads = f"GPU ({gpu_name()})"
        else:
            self.versions[record.distribution] = _distribution_version(record.distribution)
            self.threads = f"as the {self.name!r} backend ({record.distribution}) sets it"

    def build(self, problem) -> Runnable:
        import gpukb

        backend, name = self.backend, self.name
        convert = backend.asarray
        # A backend that takes calls over (the dask plugin) runs cells with NumPy weights on its
        # workers; the others get the cell in their own arrays, frozen (Cell.freeze: fixed
        # weights, which the cpu kernels pack once, in the untimed first calls, as onnxruntime
        # packs them when its session is created).
        cell = problem.cell()
        if not takes_calls_over(self.record):
            cell = cell.converted(convert).freeze()
        inputs = convert(problem.x)
        states = [convert(s) for s in problem.states]
        sync = synchronizer(backend)

        def run():
            outputs = gpukb.rnn(cell, inputs, states, backend=name)[1]
            if hasattr(outputs, "__dask_graph__"):   # lazy (the dask plugin): computing counts
                outputs = outputs.compute()
            sync()  # inside the timed region: queued GPU work counts
            return outputs

        return Runnable(run, backend.to_numpy)


def runs_generic_loop_only(backend) -> bool:
    """True when ``backend`` neither fuses calls (``fused_rnn``) nor takes ``rnn`` over: every call
    runs gpukb's generic Python loop on its arrays."""
    from gpukb import Backend

    cls = type(backend)
    return cls.fused_rnn is Backend.fused_rnn and cls.rnn is Backend.rnn


def takes_calls_over(record) -> bool:
    """True for a plugin backend that takes every call over (its own ``rnn``), as the dask plugin
    does to schedule gpukb's kernels on workers: its time is not one of gpukb's kernels."""
    from gpukb import Backend

    return record.distribution != "gpukb" and type(record.backend).rnn is not Backend.rnn


def default_backends(records) -> tuple[list[str], list[tuple[str, str]]]:
    """The backends ``gpukb bench`` runs when ``--backends`` is not given, and the ones it leaves
    out as ``(key, reason)``: those that only run the generic loop, and plugins that take every
    call over (``takes_calls_over``)."""
    names, left_out = [], []
    for record in records:
        if runs_generic_loop_only(record.backend):
            left_out.append((f"gpukb[{record.name}]",
                             f"not run by default: the {record.name!r} backend "
                             f"({record.distribution}) has no kernel of its own, it runs gpukb's "
                             f"generic Python loop; --backends {record.name} runs it"))
        elif takes_calls_over(record):
            left_out.append((f"gpukb[{record.name}]",
                             f"not run by default: the {record.name!r} backend "
                             f"({record.distribution}) takes each call over and runs it on "
                             f"other backends; --backends {record.name} runs it"))
        else:
            names.append(record.name)
    return names, left_out


def make_implementation(key: str) -> Implementation:
    """A fresh implementation from its key: ``gpukb[NAME]`` or a peer's key."""
    if key.startswith("gpukb[") and key.endswith("]"):
        return GpukbBackend(key[len("gpukb["):-1])
    from .peers import make_peer

    return make_peer(key)


def gpu_name() -> str:
    try:
        import cupy

        props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
        name = props["name"]
        return name.decode() if isinstance(name, bytes) else str(name)
    except Exception as error:
        return f"unknown GPU ({type(error).__name__})"


def _distribution_version(name: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(name)
    except Exception:
        return "unknown"
