"""Which kind of file a path holds, judged by its first bytes (never by its extension): a zip
archive (Keras 3 / tf_keras ``.keras``) or an HDF5 file (legacy ``.h5``)."""

from __future__ import annotations

import os
from typing import Any

from .._errors import ModelFileError

# A zip archive starts with a local file header; an empty one with the end-of-directory record.
_ZIP_SIGNATURES = (b"PK\x03\x04", b"PK\x05\x06")
# HDF5's superblock signature: at offset 0, or after a user block of 512, 1024, 2048, ... bytes.
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def check_path(path: Any) -> str:
    """``path`` as a string, after checking that it names a regular, readable file."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(
            f"path must be a str or os.PathLike naming a saved Keras model, "
            f"got {type(path).__name__}")
    path = os.fspath(path)
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if not os.path.exists(path):
        raise ModelFileError(f"{path!r}: no such file")
    if os.path.isdir(path):
        raise ModelFileError(
            f"{path!r} is a directory: give the path of a .keras or .h5 file written by "
            f"model.save() (a TensorFlow SavedModel directory is not supported)")
    if not os.path.isfile(path):
        raise ModelFileError(f"{path!r} is not a regular file")
    return path


def detect_format(path: str) -> str:
    """``"zip"`` or ``"hdf5"`` from the file's content; ``ModelFileError`` for anything else."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if head[:4] in _ZIP_SIGNATURES:
                return "zip"
            if head == _HDF5_SIGNATURE:
                return "hdf5"
            size = os.fstat(f.fileno()).st_size
            offset = 512
            while offset + 8 <= size:
                f.seek(offset)
                if f.read(8) == _HDF5_SIGNATURE:
                    return "hdf5"
                offset *= 2
    except OSError as e:
        raise ModelFileError(f"{path!r} cannot be read: {e}") from e
    if not head:
        raise ModelFileError(f"{path!r} is empty: not a Keras model file")
    raise ModelFileError(
        f"{path!r} is neither a zip archive (.keras) nor an HDF5 file (.h5): not a Keras model "
        f"file written by model.save()")
