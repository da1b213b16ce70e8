"""What ``gpukb bench --model PATH`` times: one saved model, run by gpukb and by Keras itself.

Each implementation is prepared (``prepare``: import its libraries, or ``Skipped``), then loads
the file (``load``: ``Skipped`` with the library's own error when it cannot read it), then is
built per batch size and call (``build(inputs, call)``: a ``Runnable`` whose ``run`` is what a
user calls, NumPy in, NumPy out, synchronised):

- ``gpukb[NAME]``: ``gpukb.keras.load_model(path, backend=NAME)``; ``predict``:
  ``model.predict(x)``, ``call``: ``model(x)`` (the same computation), the inputs converted to
  the backend's arrays outside the timed call;
- ``keras3[BACKEND]`` (jax, torch, numpy, tensorflow): Keras 3 with ``KERAS_BACKEND=BACKEND``
  (fixed when Keras is imported, hence one process each), ``keras.saving.load_model(path)``;
  ``predict``: ``model.predict(x, batch_size=B, verbose=0)`` (one batch, compiled where the
  backend compiles), ``call``: ``model(x, training=False)`` converted to NumPy (eager);
- ``tf.keras``: ``tf_keras.models.load_model(path)`` (tf.keras 2 files), the same two calls.

Keras 3 reads only files written by Keras 3, and tf_keras only files written by tf.keras 2 or
tf_keras (Keras 3.15 refuses the ``time_major`` option of tf_keras recurrent layers; tf_keras
2.21 refuses the ``batch_shape`` of Keras 3 input layers): the other one is skipped, with its
error as the reason.
"""

from __future__ import annotations

import importlib
import os

import numpy as np

from .implementations import GpukbBackend, Runnable, Skipped, synchronizer
from .models import as_list
from .peers import Keras3Peer, TfKerasPeer, _import

#: Keras 3 backends, in table order, and the library each needs (None: NumPy only).
KERAS_BACKENDS = {"jax": "jax", "torch": "torch", "numpy": None, "tensorflow": "tensorflow"}
#: ``--peers`` names with ``--model`` (``keras3`` stands for every Keras 3 backend).
MODEL_PEER_NAMES = tuple(f"keras3[{b}]" for b in KERAS_BACKENDS) + ("tf.keras",)
#: What installs every peer of ``--model`` (Keras 3 and its backends; tf_keras and TensorFlow).
INSTALL_MODEL_PEERS = "python3 -m pip install keras jax torch tensorflow tf_keras"


def _load_error(library: str, error: Exception) -> Skipped:
    first = f"{type(error).__name__}: {error}".strip().splitlines()[0]
    return Skipped(f"{library} cannot load this file ({first[:200]})")


def _numpy_outputs(outputs) -> list:
    return [np.asarray(y) for y in as_list(outputs)]


def _argument(inputs: list):
    """What ``model.predict`` / ``model(...)`` take: the array, or the list for several inputs."""
    return inputs if len(inputs) > 1 else inputs[0]


class GpukbModel(GpukbBackend):
    """``gpukb.keras`` on one gpukb backend (prepared as ``GpukbBackend``)."""

    def load(self, path: str) -> None:
        import gpukb

        self.model = gpukb.keras.load_model(path, backend=self.name)

    def build(self, inputs, call="predict") -> Runnable:
        backend, model = self.backend, self.model
        x = _argument([backend.asarray(a) for a in inputs])
        sync = synchronizer(backend)
        function = model.predict if call == "predict" else model

        def run():
            outputs = function(x)
            sync()  # inside the timed region: queued GPU work counts
            return outputs

        return Runnable(run, lambda outputs: [backend.to_numpy(y) for y in as_list(outputs)])


def _keras_runnable(model, inputs, call, convert) -> Runnable:
    """``predict`` (one batch of all the samples) or ``model(x, training=False)``, as NumPy."""
    x = _argument(list(inputs))
    batch = int(inputs[0].shape[0])
    if call == "predict":
        def run():
            return model.predict(x, batch_size=batch, verbose=0)
    else:
        def run():
            return [convert(y) for y in as_list(model(x, training=False))]
    return Runnable(run, _numpy_outputs)


class Keras3Model(Keras3Peer):
    """Keras 3 on one backend."""

    def __init__(self, backend: str):
        super().__init__()
        self.key = f"keras3[{backend}]"
        self.wanted = backend

    def label(self, workload: str) -> str:
        return self.key

    def prepare(self) -> None:
        library = KERAS_BACKENDS[self.wanted]
        if library is not None:
            _import(library, f"pip install keras {library}")
        if self.wanted == "tensorflow":
            os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        os.environ["KERAS_BACKEND"] = self.wanted  # read once, when keras is imported
        super().prepare()
        if self.backend_name != self.wanted:
            raise Skipped(f"Keras runs the {self.backend_name!r} backend, not {self.wanted!r} "
                          "(keras was imported before KERAS_BACKEND was set)")
        if library is not None:
            self.versions[library] = importlib.import_module(library).__version__
        if self.wanted == "torch":
            import torch

            self.threads = f"torch {torch.get_num_threads()} thread(s) (its default)"
        elif self.wanted == "jax":
            self.threads = f"XLA CPU thread pool (default: all {os.cpu_count()} cores)"
        elif self.wanted == "tensorflow":
            self.threads = f"TensorFlow default thread pools (all {os.cpu_count()} cores)"

    def load(self, path: str) -> None:
        try:
            self.model = self.keras.saving.load_model(path, compile=False)
        except Exception as error:  # noqa: BLE001 - the reason shown for the skip
            raise _load_error(f"Keras {self.versions['keras']}", error) from None

    def build(self, inputs, call="predict") -> Runnable:
        return _keras_runnable(self.model, inputs, call, self.keras.ops.convert_to_numpy)


class TfKerasModel(TfKerasPeer):
    """tf.keras 2 (tf_keras), eager ``model(x)`` and graph-compiled ``predict``."""

    def label(self, workload: str) -> str:
        return self.key

    def load(self, path: str) -> None:
        try:
            self.model = self.tfk.models.load_model(path, compile=False)
        except Exception as error:  # noqa: BLE001 - the reason shown for the skip
            raise _load_error(f"tf_keras {self.versions['tf_keras']}", error) from None

    def build(self, inputs, call="predict") -> Runnable:
        return _keras_runnable(self.model, inputs, call, lambda y: y.numpy())


def model_peer_keys(names) -> list[str]:
    """The peer keys the ``--peers`` names stand for with ``--model`` (``keras3``: every
    backend), in table order, each once."""
    keys = []
    for name in names:
        keys += [n for n in MODEL_PEER_NAMES if n.startswith("keras3[")] if name == "keras3" \
            else [name]
    return list(dict.fromkeys(keys))


def make_model_implementation(key: str) -> GpukbModel | Keras3Model | TfKerasModel:
    """A fresh implementation for ``--model`` from its key."""
    if key.startswith("gpukb[") and key.endswith("]"):
        return GpukbModel(key[len("gpukb["):-1])
    if key == "tf.keras":
        return TfKerasModel()
    backend = key[len("keras3["):-1] if key.startswith("keras3[") and key.endswith("]") else None
    if backend in KERAS_BACKENDS:
        return Keras3Model(backend)
    raise ValueError(f"unknown implementation {key!r}; known: gpukb[BACKEND], "
                     f"{', '.join(MODEL_PEER_NAMES)}.")

