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


def dtype_kind(dtype: Any) -> str:
    """The NumPy kind letter of any library's dtype ('f' floating, 'i'/'u' integer, 'b' bool, ...).

    '' for a dtype NumPy has no equivalent of, except torch-style floating dtypes (bfloat16),
    which report ``is_floating_point`` and count as 'f'."""
    try:
        return numpy_dtype(dtype).kind
    except TypeError:
        return "f" if getattr(dtype, "is_floating_point", False) is True else ""
