"""Embedding and Masking: the two layers that create masks.

Sources: Keras 3 ``keras/src/layers/core/{embedding,masking}.py``; tf.keras 2
``tf_keras/src/layers/core/{embedding,masking}.py``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import Layer, Run, Sym, shape_text


class Embedding(Layer):
    """``embeddings[ids]``; with ``mask_zero`` the output mask is ``ids != 0``.

    Keras casts non-integer ids to int32; the model checks its own inputs first (whole numbers in
    ``[0, input_dim)``), so a float id is never silently truncated."""

    autocast = False  # ids are not cast to the float dtype

    def configure(self) -> None:
        self.input_dim = self.option("input_dim", kind=int)
        self.output_dim = self.option("output_dim", kind=int)
        if self.input_dim <= 0 or self.output_dim <= 0:
            raise self.file_error(f"input_dim={self.input_dim} and output_dim={self.output_dim} "
                                  "should be positive.")
        self.mask_zero = self.option("mask_zero", False, kind=bool)
        self.supports_masking = self.mask_zero  # as Keras: no mask_zero, no masking support
        self.input_length = self.option("input_length", None, kind=(int, list, tuple, type(None)))
        self.option("sparse", False, allowed=(False,), why="gpukb takes dense arrays")
        self.option("lora_rank", None, allowed=(None,), why="LoRA layers are not supported")
        self.option("lora_alpha", None, allowed=(None,), why="LoRA layers are not supported")
        self.option("quantization_config", None, allowed=(None,),
                    why="quantized layers are not supported")

    def build(self, inputs: Any, **kwargs: Any) -> None:
        self.check_weights([("embeddings", (self.input_dim, self.output_dim))],
                           f"input_dim={self.input_dim}, output_dim={self.output_dim}")

    def infer(self, inputs: Any, **kwargs: Any) -> Any:
        x = self.input_sym(inputs)
        if self.input_length is not None:
            lengths = list(self.input_length) if isinstance(self.input_length, (list, tuple)) \
                else [self.input_length]
            if len(lengths) != x.ndim - 1 or any(
                    a is not None and b is not None and a != b for a, b in zip(lengths, x.shape[1:])):
                raise self.file_error(f"input_length={self.input_length!r} does not fit its input "
                                      f"shape {shape_text(x.shape)}.")
        return Sym(x.shape + (self.output_dim,), self.dtype)

    def call(self, run: Run, inputs: Any, **kwargs: Any) -> Any:
        ids = inputs
        if np.dtype(ids.dtype).kind not in "iu":
            ids = ids.astype(np.int32)
        (embeddings,) = self.weights_for(run)
        return run.xp.take(embeddings, ids, axis=0)

    def compute_mask(self, inputs: Any, mask: Any) -> Any:
        if not self.mask_zero:
            return None
        return inputs != 0

    def check_ids(self, name: str, ids: np.ndarray) -> None:
        """ValueError naming the model input ``name`` unless every id is a whole number in
        ``[0, input_dim)`` (``ids``: NumPy, checked before the model runs)."""
        if ids.size == 0:
            return
        if ids.dtype.kind == "f" and not np.all(np.isfinite(ids) & (ids == np.floor(ids))):
            raise ValueError(f"input {name!r} feeds Embedding layer {self.name!r}: its values must be "
                             "whole numbers (token ids); it has fractional or non-finite values.")
        low, high = ids.min(), ids.max()
        if low < 0 or high >= self.input_dim:
            raise ValueError(f"input {name!r} feeds Embedding layer {self.name!r} (input_dim="
                             f"{self.input_dim}): ids must be in [0, {self.input_dim - 1}], got values "
                             f"from {low} to {high}.")


class Masking(Layer):
    """Steps whose features all equal ``mask_value`` are masked and set to zero."""

    supports_masking = True
    computes_mask_in_call = True  # tf.keras `_compute_output_and_mask_jointly`

    def configure(self) -> None:
        value = self.option("mask_value", 0.0)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.unsupported("mask_value", value, "gpukb takes a number")
        self.mask_value = float(value)

    def infer(self, inputs: Any, **kwargs: Any) -> Any:
        x = self.input_sym(inputs, min_ndim=2)
        return Sym(x.shape, self.dtype)

    def call(self, run: Run, inputs: Any, **kwargs: Any) -> Any:
        keep = run.xp.any(inputs != self.mask_value, axis=-1, keepdims=True)
        if run.keras_major >= 3:
            outputs = run.xp.where(keep, inputs, run.xp.zeros((), dtype=inputs.dtype))
        else:
            outputs = inputs * keep.astype(inputs.dtype)
        run.set_mask(outputs, keep[..., 0])
        return outputs

    def compute_mask(self, inputs: Any, mask: Any) -> Any:
        return (inputs != self.mask_value).any(axis=-1)
