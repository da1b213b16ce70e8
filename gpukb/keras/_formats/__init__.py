"""Readers of saved Keras models: any supported file becomes one ``ModelSpec``.

``read_model(path)`` tells the format by the file's first bytes (not its extension):

- a zip archive: a ``.keras`` file written by Keras 3 (``file_format="keras_v3"``) or by
  tf_keras (``"tf_keras_v3"``), told apart by ``metadata.json``'s ``keras_version``
  (``keras_v3.py``);
- an HDF5 file: a legacy ``.h5`` model written by tf.keras 2 / tf_keras or Keras 3
  (``"h5"``; ``hdf5_legacy.py``).

The config becomes layers and a graph of calls (``_graph.py``), with only the dialect rewrites
listed in ``_config.py``; each layer's weights come in ``get_weights()`` order. Anything wrong
with the file is a ``ModelFileError`` that names the path; nothing in a file is executed or
unpickled.
"""

from __future__ import annotations

import os

from .._spec import ModelSpec
from . import hdf5_legacy, keras_v3
from ._detect import check_path, detect_format


def read_model(path: str | os.PathLike[str]) -> ModelSpec:
    """The model saved at ``path`` (``.keras`` or legacy ``.h5``) as a ``ModelSpec``."""
    path = check_path(path)
    if detect_format(path) == "zip":
        return keras_v3.read(path)
    return hdf5_legacy.read(path)


__all__ = ["read_model"]
