"""``gpukb.keras``: run recurrent models saved by Keras, without TensorFlow or Keras.

``load_model(path)`` reads a Keras 3 ``.keras`` file, a tf_keras ``.keras`` file or a legacy
HDF5 ``.h5`` file and returns a ``Model`` whose ``predict``/``__call__`` compute what Keras's
``model.predict`` computes, on NumPy or CuPy arrays (recurrent layers through ``gpukb.rnn`` and
its fused kernels). See docs/keras-models.md.

Importing this package is light: h5py and zipfile are imported by ``load_model`` only.
"""

from __future__ import annotations

import os

from ._errors import ModelFileError, UnsupportedLayerError
from ._model import Model


def load_model(path: str | os.PathLike, *, backend: str | None = None) -> Model:
    """The model saved at ``path`` (the format is recognised by content, not by extension).

    Every check happens here: a file that is not a Keras model, truncated, or whose weights
    disagree with its config is a ``ModelFileError``; a layer or option gpukb does not implement
    is an ``UnsupportedLayerError`` naming the layer, its class, its position and the option.
    ``backend`` names the gpukb backend that runs the model (default: chosen by the inputs'
    array type, as for ``gpukb.rnn``)."""
    from ._formats import read_model

    spec = read_model(path)
    try:
        return Model(spec, backend=backend)
    except (ModelFileError, UnsupportedLayerError) as error:
        raise type(error)(f"{os.fspath(path)!r}: {error}") from None


__all__ = ["Model", "ModelFileError", "UnsupportedLayerError", "load_model"]
