"""Keras 3 graph operations: the mask arithmetic a Keras 3 functional model records.

When Keras 3 builds a functional model, a layer's ``compute_mask`` runs on symbolic tensors, so
its ``keras.ops`` calls (``not_equal``, ``any``, ``expand_dims``, ``logical_or``, ...) become nodes
of the graph, and a recurrent layer downstream gets the result as an explicit ``mask`` argument.
Those nodes are saved with the model (module ``keras.src.ops.numpy``); the reader names their
class ``"ops.<Name>"`` (``ops.NotEqual``: never confused with a layer such as ``Concatenate``),
and gpukb runs them like layers, without masks of their own. Source:
``keras/src/ops/numpy.py`` and ``keras/src/ops/core.py`` (``Cast``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import Layer, Run, Sym, shape_text

OPERATION_PREFIX = "ops."  # how the file readers name the class of an operation node


def _broadcast(op: Layer, a: tuple, b: tuple) -> tuple:
    ndim = max(len(a), len(b))
    a = (1,) * (ndim - len(a)) + a
    b = (1,) * (ndim - len(b)) + b
    out = []
    for i, j in zip(a, b):
        if i == 1 or j == 1:
            out.append(j if i == 1 else i)
        elif i is None or j is None:
            out.append(i if j is None else j)
        elif i != j:
            raise op.file_error(f"its operands have incompatible shapes {shape_text(a)} and {shape_text(b)}.")
        else:
            out.append(i)
    return tuple(out)


def _shape(value: Any) -> tuple:
    return value.shape if isinstance(value, Sym) else tuple(np.shape(value))


def _axes(op: Layer, axis: Any, ndim: int) -> list[int] | None:
    if axis is None:
        return None
    axes = list(axis) if isinstance(axis, (list, tuple)) else [axis]
    if not all(isinstance(a, int) and -ndim <= a < ndim for a in axes):
        raise op.file_error(f"axis={axis!r} does not fit an operand of rank {ndim}.")
    return sorted(a % ndim for a in axes)


class Operation(Layer):
    is_operation = True
    autocast = False

    def _dtype_option(self) -> str:
        self._read.add("dtype")
        return self.config.get("dtype") or "bool"

    def configure(self) -> None:
        self.op_name = self.class_name[len(OPERATION_PREFIX):]
        self.axis = self.option("axis", None) if "axis" in self.config else None
        self.keepdims = self.option("keepdims", False, kind=bool)

    def build(self, *args: Any, **kwargs: Any) -> None:
        pass

    def infer_call(self, bound: dict) -> Any:
        return self.infer_op(**bound)

    def infer_op(self, **bound: Any) -> Sym:
        raise NotImplementedError

    def call_operation(self, run: Run, bound: dict) -> Any:
        return self.compute(run.xp, **bound)

    def compute(self, xp: Any, **bound: Any) -> Any:
        raise NotImplementedError


class Binary(Operation):
    call_params = {3: ("x1", "x2")}
    FUNCTIONS = {"NotEqual": "not_equal", "Equal": "equal", "LogicalOr": "logical_or",
                 "LogicalAnd": "logical_and"}

    def infer_op(self, x1: Any = None, x2: Any = None, **_: Any) -> Sym:
        return Sym(_broadcast(self, _shape(x1), _shape(x2)), "bool")

    def compute(self, xp: Any, x1: Any = None, x2: Any = None, **_: Any) -> Any:
        return getattr(xp, self.FUNCTIONS[self.op_name])(x1, x2)


class Unary(Operation):
    call_params = {3: ("x",)}

    def infer_op(self, x: Any = None, **_: Any) -> Sym:
        shape = _shape(x)
        name = self.op_name
        if name in ("Any", "All"):
            axes = _axes(self, self.axis, len(shape))
            kept = [1 if (axes is None or i in axes) else d for i, d in enumerate(shape)]
            shape = tuple(kept) if self.keepdims else tuple(
                d for i, d in enumerate(shape) if axes is not None and i not in axes)
            return Sym(shape, "bool")
        if name == "ExpandDims":
            axes = _axes(self, self.axis, len(shape) + 1)
            out = list(shape)
            for a in axes or []:
                out.insert(a, 1)
            return Sym(tuple(out), x.dtype)
        if name == "Squeeze":
            axes = _axes(self, self.axis, len(shape))
            if axes is not None and any(shape[a] not in (1, None) for a in axes):
                raise self.file_error(f"cannot squeeze axis {self.axis} of shape {shape_text(shape)}.")
            return Sym(tuple(d for i, d in enumerate(shape) if (i not in axes if axes is not None else d != 1)),
                       x.dtype)
        if name == "LogicalNot":
            return Sym(shape, "bool")
        return Sym(shape, self.config.get("dtype") or x.dtype)  # ZerosLike, OnesLike, Cast

    def compute(self, xp: Any, x: Any = None, **_: Any) -> Any:
        name = self.op_name
        axis = None if self.axis is None else (tuple(self.axis) if isinstance(self.axis, list) else self.axis)
        if name == "Any":
            return xp.any(x, axis=axis, keepdims=self.keepdims)
        if name == "All":
            return xp.all(x, axis=axis, keepdims=self.keepdims)
        if name == "ExpandDims":
            return xp.expand_dims(x, axis)
        if name == "Squeeze":
            return xp.squeeze(x, axis=axis)
        if name == "LogicalNot":
            return xp.logical_not(x)
        dtype = self.config.get("dtype") or x.dtype
        if name == "ZerosLike":
            return xp.zeros(x.shape, dtype=dtype)
        if name == "OnesLike":
            return xp.ones(x.shape, dtype=dtype)
        return x.astype(dtype)  # Cast


class ConcatenateOp(Operation):
    call_params = {3: ("xs",)}

    def infer_op(self, xs: Any = None, **_: Any) -> Sym:
        if not isinstance(xs, (list, tuple)) or not xs:
            raise self.file_error("it concatenates a list of tensors; a node gives none.")
        shapes = [_shape(x) for x in xs]
        ndim = len(shapes[0])
        axis = (self.axis if self.axis is not None else 0) % ndim
        out = list(shapes[0])
        for s in shapes[1:]:
            out[axis] = None if out[axis] is None or s[axis] is None else out[axis] + s[axis]
        return Sym(tuple(out), xs[0].dtype)

    def compute(self, xp: Any, xs: Any = None, **_: Any) -> Any:
        return xp.concatenate(list(xs), axis=self.axis if self.axis is not None else 0)


OPERATIONS = {
    "NotEqual": Binary, "Equal": Binary, "LogicalOr": Binary, "LogicalAnd": Binary,
    "Any": Unary, "All": Unary, "ExpandDims": Unary, "Squeeze": Unary, "LogicalNot": Unary,
    "ZerosLike": Unary, "OnesLike": Unary, "Cast": Unary, "Concatenate": ConcatenateOp,
}


def operation_class(class_name: str) -> type[Operation] | None:
    """The class for a Keras 3 operation node (``"ops.<Name>"``), or None for a layer."""
    if not class_name.startswith(OPERATION_PREFIX):
        return None
    return OPERATIONS.get(class_name[len(OPERATION_PREFIX):])
