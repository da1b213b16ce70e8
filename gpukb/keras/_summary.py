"""``Model.summary()``: a table like Keras's, with what runs each layer."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .layers.base import Sym, shape_text

if TYPE_CHECKING:
    from ._model import Model

_FORMATS = {"keras_v3": "Keras 3 .keras", "tf_keras_v3": "tf_keras .keras", "h5": "legacy HDF5"}


def _shapes_text(out: Any) -> str:
    if isinstance(out, Sym):
        return shape_text(out.shape)
    return "[" + ", ".join(_shapes_text(o) for o in out) + "]"


def trainable_counts(model: "Model") -> tuple[int, int]:
    """(trainable, non-trainable) parameter counts as Keras counts them: BatchNormalization's
    moving statistics and every weight of a layer saved with ``trainable=False`` are
    non-trainable."""
    frozen = sum(layer.count_non_trainable_params() for layer in model.layers)
    return model.count_params() - frozen, frozen


def summary_lines(model: "Model", backend: str) -> list[str]:
    spec = model.spec
    rows = [("Layer (type)", "Output Shape", "Param #", "Runs as")]
    shown = {layer.name for layer in model.layers}
    for name, layer in model._layers.items():
        if name not in shown:
            continue
        outputs = [out for (layer_name, _), out in model._node_syms.items() if layer_name == name]
        if layer.class_name == "InputLayer":
            i = model.input_names.index(name) if name in model.input_names else None
            shape = shape_text(model._input_syms[i].shape) if i is not None else ""
        else:
            shape = " ".join(_shapes_text(out) for out in outputs)
        rows.append((f"{name} ({layer.class_name})", shape, f"{layer.count_params():,}",
                     layer.describe(backend)))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    rule = "-" * (sum(widths) + 6)

    def line(row):
        return "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()

    trainable, frozen = trainable_counts(model)
    return [
        f'Model: "{spec.name}" ({spec.class_name}; written by Keras {spec.keras_version}, '
        f"{_FORMATS.get(spec.file_format, spec.file_format)} file; Keras {spec.keras_major} semantics)",
        rule, line(rows[0]), rule.replace("-", "="),
        *[line(row) for row in rows[1:]],
        rule.replace("-", "="),
        f"Total params: {trainable + frozen:,}",
        f"Trainable params: {trainable:,}",
        f"Non-trainable params: {frozen:,}",
        f"Backend: {backend}",
    ]
