"""Concatenate and the elementwise merges (Add, Subtract, Multiply, Average, Maximum, Minimum).

Sources: Keras 3 ``keras/src/layers/merging/*.py``; tf.keras 2
``tf_keras/src/layers/merging/*.py``. The two versions merge masks differently: for the
elementwise merges Keras 3 ORs the masks (no mask if any input has none), tf.keras ANDs the
masks that exist; Keras 3's Multiply also treats masked entries as 1 and zeros the output where
every input is masked. Concatenate: Keras 3 ORs over the feature axis, tf.keras ANDs.
"""

from __future__ import annotations

import functools
from typing import Any

from .base import Layer, Run, Sym, shape_text


def _input_syms(layer: Layer, inputs: Any, minimum: int) -> list[Sym]:
    if not isinstance(inputs, (list, tuple)) or not all(isinstance(x, Sym) for x in inputs):
        raise layer.file_error("a merge layer is called on a list of tensors; this call is not.")
    if len(inputs) < minimum:
        raise layer.file_error(f"it needs at least {minimum} inputs, a node gives {len(inputs)}.")
    return list(inputs)


class Merge(Layer):
    """The elementwise merges: inputs of lower rank get axes inserted after the batch axis,
    then broadcast (``_compute_elemwise_op_output_shape``)."""

    supports_masking = True
    minimum_inputs = 1

    def infer(self, inputs: Any, **kwargs: Any) -> Any:
        syms = _input_syms(self, inputs, self.minimum_inputs)
        if self.class_name == "Subtract" and len(syms) != 2:
            raise self.file_error(f"Subtract takes exactly 2 inputs, a node gives {len(syms)}.")
        ndim = max(s.ndim for s in syms)
        shape: tuple = ()
        for s in syms:
            padded = (s.shape[0],) + (1,) * (ndim - s.ndim) + s.shape[1:]
            shape = _broadcast_shapes(self, shape, padded) if shape else padded
        return Sym(shape, self.dtype)

    def call(self, run: Run, inputs: Any, **kwargs: Any) -> Any:
        ndim = max(x.ndim for x in inputs)
        xs = [x.reshape((x.shape[0],) + (1,) * (ndim - x.ndim) + tuple(x.shape[1:])) if x.ndim < ndim else x
              for x in inputs]
        return self.merge(run, xs)

    def merge(self, run: Run, xs: list) -> Any:
        xp = run.xp
        name = self.class_name
        if name == "Add":
            return functools.reduce(lambda a, b: a + b, xs)
        if name == "Subtract":
            return xs[0] - xs[1]
        if name == "Average":
            return functools.reduce(lambda a, b: a + b, xs) / len(xs)
        if name == "Maximum":
            return functools.reduce(xp.maximum, xs)
        if name == "Minimum":
            return functools.reduce(xp.minimum, xs)
        return self._multiply(run, xs)

    def _multiply(self, run: Run, xs: list) -> Any:
        if run.keras_major < 3:
            return functools.reduce(lambda a, b: a * b, xs)
        # Keras 3 Multiply._merge_function: masked entries count as 1; where every input is
        # masked the output is 0, and the output mask is set here (the OR of the masks).
        xp = run.xp
        masks = [run.get_mask(x) for x in xs]
        has_output_mask = all(m is not None for m in masks)
        output: Any = None
        output_mask: Any = None
        for x, mask in zip(xs, masks):
            if mask is not None:
                mask = xp.broadcast_to(mask[..., None], x.shape)
                x = xp.where(mask, x, xp.ones((), dtype=x.dtype))
                if has_output_mask:
                    output_mask = mask if output_mask is None else xp.logical_or(output_mask, mask)
            output = x if output is None else output * x
        if has_output_mask:
            output = xp.where(output_mask, output, xp.zeros((), dtype=output.dtype))
            run.set_mask(output, xp.any(output_mask, axis=-1))
        return output

    def compute_mask(self, inputs: Any, mask: Any) -> Any:
        if mask is None:
            return None
        masks = list(mask) if isinstance(mask, (list, tuple)) else [mask]
        if self.keras_major >= 3:
            if any(m is None for m in masks):
                return None
            return functools.reduce(lambda a, b: a | b, masks)
        present = [m for m in masks if m is not None]
        if not present:
            return None
        return functools.reduce(lambda a, b: a & b, present)


def _broadcast_shapes(layer: Layer, a: tuple, b: tuple) -> tuple:
    out = [a[0] if a[0] is not None else b[0]]
    for i, j in zip(a[1:], b[1:]):
        if i is None or j is None:
            out.append(None)
        elif i == 1 or j == 1:
            out.append(j if i == 1 else i)
        elif i != j:
            raise layer.file_error(f"its inputs have incompatible shapes {shape_text(a)} and {shape_text(b)}.")
        else:
            out.append(i)
    return tuple(out)


class Concatenate(Layer):
    supports_masking = True

    def configure(self) -> None:
        self.axis = self.option("axis", -1, kind=int)

    def infer(self, inputs: Any, **kwargs: Any) -> Any:
        syms = _input_syms(self, inputs, 1)
        ndim = syms[0].ndim
        if any(s.ndim != ndim for s in syms):
            raise self.file_error("its inputs have different ranks: "
                                  + ", ".join(shape_text(s.shape) for s in syms) + ".")
        axis = self.axis + ndim if self.axis < 0 else self.axis
        if not 1 <= axis < ndim:
            raise self.file_error(f"axis={self.axis} does not fit inputs of rank {ndim}.")
        shape = list(syms[0].shape)
        for s in syms[1:]:
            for i, (d, e) in enumerate(zip(shape, s.shape)):
                if i == axis:
                    shape[i] = None if d is None or e is None else d + e
                elif d is not None and e is not None and d != e:
                    raise self.file_error("its inputs' shapes differ off the concatenation axis: "
                                          + ", ".join(shape_text(t.shape) for t in syms) + ".")
                elif d is None:
                    shape[i] = e
        return Sym(tuple(shape), self.dtype)

    def call(self, run: Run, inputs: Any, **kwargs: Any) -> Any:
        return run.xp.concatenate(list(inputs), axis=self.axis)

    def compute_mask(self, inputs: Any, mask: Any) -> Any:
        if mask is None:
            return None
        masks = list(mask) if isinstance(mask, (list, tuple)) else [mask]
        if all(m is None for m in masks):
            return None
        xp = _namespace(inputs[0])
        expanded = []
        for x, m in zip(inputs, masks):
            if m is None:
                expanded.append(xp.ones(x.shape, dtype=bool))
            elif m.ndim < x.ndim:
                m = m[..., None]
                # Keras 3 broadcasts the mask to the input's shape; tf.keras keeps (..., 1).
                expanded.append(xp.broadcast_to(m, x.shape) if self.keras_major >= 3 else m)
            else:
                expanded.append(m)
        concatenated = xp.concatenate(expanded, axis=self.axis)
        if self.keras_major >= 3:
            return xp.any(concatenated, axis=-1)
        return xp.all(concatenated, axis=-1)


def _namespace(x: Any) -> Any:
    import importlib

    return importlib.import_module(type(x).__module__.split(".")[0])


class Add(Merge):
    minimum_inputs = 1


class Subtract(Merge):
    minimum_inputs = 2


class Multiply(Merge):
    minimum_inputs = 1


class Average(Merge):
    minimum_inputs = 1


class Maximum(Merge):
    minimum_inputs = 1


class Minimum(Merge):
    minimum_inputs = 1
