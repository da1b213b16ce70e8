"""Symbolic tensors: ``KerasTensor``, ``placeholder`` and ``is_keras_tensor``.

A KerasTensor describes an array (shape with None for unknown sizes, dtype, sparse/ragged flags,
name) without holding data, as Keras' symbolic inputs do.
"""

from __future__ import annotations

import operator
from typing import TYPE_CHECKING, Any, NoReturn, Sequence, SupportsIndex

import numpy as np

from . import _state

if TYPE_CHECKING:
    from numpy.typing import DTypeLike


def _standardize_shape(shape: Any) -> tuple[int | None, ...]:
    if isinstance(shape, (str, bytes)) or not hasattr(shape, "__iter__"):
        raise TypeError(
            f"shape must be a tuple or list of ints and None, got {type(shape).__name__} {shape!r}."
        )
    result: list[int | None] = []
    for axis, size in enumerate(shape):
        if size is None:
            result.append(None)
            continue
        if isinstance(size, (bool, np.bool_)):
            raise TypeError(f"shape[{axis}] must be an int or None, got {size!r} in {tuple(shape)!r}.")
        try:
            size = operator.index(size)
        except TypeError:
            raise TypeError(
                f"shape[{axis}] must be an int or None, got {type(size).__name__} {size!r}."
            ) from None
        if size < 0:
            raise ValueError(f"shape[{axis}] must be >= 0 or None, got {size} in {tuple(shape)!r}.")
        result.append(size)
    return tuple(result)


def _standardize_dtype(dtype: Any) -> str:
    if dtype is None:
        return _state.floatx()
    try:
        return np.dtype(dtype).name
    except TypeError:
        raise ValueError(
            f"Invalid dtype {dtype!r}: expected a NumPy dtype name such as 'float32' or 'int64'."
        ) from None


class KerasTensor:
    """A symbolic tensor: shape, dtype, sparse, ragged and name, with no data."""

    __slots__ = ("_shape", "_dtype", "_sparse", "_ragged", "_name")

    def __init__(self, shape: Sequence[SupportsIndex | None], dtype: DTypeLike | None = None,
                 sparse: bool = False, ragged: bool = False, name: str | None = None) -> None:
        if not isinstance(sparse, (bool, np.bool_)):
            raise TypeError(f"sparse must be a bool, got {sparse!r}.")
        if not isinstance(ragged, (bool, np.bool_)):
            raise TypeError(f"ragged must be a bool, got {ragged!r}.")
        if sparse and ragged:
            raise ValueError("A KerasTensor cannot be both sparse and ragged (got sparse=True, ragged=True).")
        if name is not None and not isinstance(name, str):
            raise TypeError(f"name must be a str or None, got {type(name).__name__} {name!r}.")
        self._shape = _standardize_shape(shape)
        self._dtype = _standardize_dtype(dtype)
        self._sparse = bool(sparse)
        self._ragged = bool(ragged)
        self._name = name if name is not None else f"keras_tensor_{_state.get_uid('keras_tensor')}"

    @property
    def shape(self) -> tuple[int | None, ...]:
        return self._shape

    @property
    def ndim(self) -> int:
        return len(self._shape)

    @property
    def dtype(self) -> str:
        return self._dtype

    @property
    def sparse(self) -> bool:
        return self._sparse

    @property
    def ragged(self) -> bool:
        return self._ragged

    @property
    def name(self) -> str:
        return self._name

    def __repr__(self) -> str:
        return (
            f"<KerasTensor name={self._name!r}, shape={self._shape}, dtype={self._dtype}, "
            f"sparse={self._sparse}, ragged={self._ragged}>"
        )

    def __array__(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise TypeError(
            f"{self!r} is symbolic and holds no data; it cannot be converted to an array."
        )

    def __bool__(self) -> NoReturn:
        raise TypeError(f"{self!r} is symbolic: it has no truth value.")


def placeholder(shape: Sequence[SupportsIndex | None] | None = None,
                ndim: SupportsIndex | None = None, dtype: DTypeLike | None = None,
                sparse: bool = False, name: str | None = None, ragged: bool = False) -> KerasTensor:
    """Return a symbolic ``KerasTensor`` (no data).

    ``shape``: tuple of ints and None; when None it is ``(None,) * ndim``. ``dtype`` defaults to
    ``floatx()`` at call time; ``name`` defaults to a unique ``'placeholder_<n>'``.
    """
    if ndim is not None:
        if isinstance(ndim, (bool, np.bool_)):
            raise TypeError(f"ndim must be an int or None, got {ndim!r}.")
        try:
            ndim = operator.index(ndim)
        except TypeError:
            raise TypeError(f"ndim must be an int or None, got {type(ndim).__name__} {ndim!r}.") from None
        if ndim < 0:
            raise ValueError(f"ndim must be >= 0, got {ndim}.")
    if shape is None:
        if ndim is None:
            raise ValueError("placeholder needs `shape` or `ndim`; both were None.")
        shape = (None,) * ndim
    else:
        shape = _standardize_shape(shape)
        if ndim is not None and ndim != len(shape):
            raise ValueError(f"placeholder got shape={shape} (rank {len(shape)}) but ndim={ndim}.")
    if sparse and ragged:
        raise ValueError("placeholder cannot be both sparse and ragged (got sparse=True, ragged=True).")
    if name is None:
        name = f"placeholder_{_state.get_uid('placeholder')}"
    return KerasTensor(shape, dtype=dtype, sparse=sparse, ragged=ragged, name=name)


def is_keras_tensor(x: Any) -> bool:
    """True for a ``KerasTensor``, False for anything else (arrays included)."""
    return isinstance(x, KerasTensor)
