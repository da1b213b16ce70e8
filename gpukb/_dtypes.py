"""The NumPy dtype of any library's array dtype (NumPy, CuPy, torch, ...)."""

from __future__ import annotations

from typing import Any

import numpy


def numpy_dtype(dtype: Any) -> numpy.dtype:
    """``numpy.dtype(dtype)``, or, for dtypes NumPy does not know (``torch.float32``), the NumPy
    dtype of the same name. TypeError when there is none."""
    try:
        return numpy.dtype(dtype)
    except TypeError:
        name = str(dtype).rsplit(".", 1)[-1]
        try:
            return numpy.dtype(name)
        except TypeError:
            raise TypeError(f"dtype {dtype!r} has no NumPy equivalent") from None
