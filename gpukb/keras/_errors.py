"""The two errors ``gpukb.keras.load_model`` raises for a file it cannot run.

Both are ``ValueError`` subclasses (the file's content is a bad value for ``load_model``), so
code that already catches ``ValueError`` keeps working.
"""

from __future__ import annotations


class ModelFileError(ValueError):
    """The file is not a whole Keras model gpukb can read: missing, not a ``.keras`` zip or an
    HDF5 file, truncated or corrupt, written by an unknown Keras format version, or its
    config and weights disagree. The message names the path and what is wrong."""


class UnsupportedLayerError(ValueError):
    """The file is a valid Keras model, but one of its layers (or one option of it) is not
    something gpukb implements. The message names the layer, its class, its position and
    the option."""
