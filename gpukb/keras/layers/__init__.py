"""The Keras layers gpukb runs, by Keras class name (``build_layer``), and the call protocol."""

from __future__ import annotations

from .._errors import UnsupportedLayerError
from .._spec import LayerSpec
from .base import Layer, Run, Sym, invoke
from .core import Activation, Dense, Flatten, Identity, InputLayer, Reshape
from .embedding import Embedding, Masking
from .merging import Add, Average, Concatenate, Maximum, Minimum, Multiply, Subtract
from .normalization import BatchNormalization, LayerNormalization
from .ops import OPERATION_PREFIX, operation_class
from .recurrent import Recurrent
from .wrappers import Bidirectional, TimeDistributed

REGISTRY: dict[str, type[Layer]] = {
    "InputLayer": InputLayer,
    "Dense": Dense,
    "Activation": Activation,
    "Dropout": Identity,
    "SpatialDropout1D": Identity,
    "GaussianNoise": Identity,
    "GaussianDropout": Identity,
    "Flatten": Flatten,
    "Reshape": Reshape,
    "Embedding": Embedding,
    "Masking": Masking,
    "LSTM": Recurrent,
    "GRU": Recurrent,
    "SimpleRNN": Recurrent,
    "Bidirectional": Bidirectional,
    "TimeDistributed": TimeDistributed,
    "Concatenate": Concatenate,
    "Add": Add,
    "Subtract": Subtract,
    "Multiply": Multiply,
    "Average": Average,
    "Maximum": Maximum,
    "Minimum": Minimum,
    "LayerNormalization": LayerNormalization,
    "BatchNormalization": BatchNormalization,
}


def supported_text() -> str:
    return ", ".join(sorted(REGISTRY))


def build_layer(spec: LayerSpec, keras_major: int, *, parent: Layer | None = None) -> Layer:
    """The gpukb layer for ``spec``; UnsupportedLayerError naming the layer, its class and
    position, and listing the supported classes, for any other class."""
    class_name = spec.class_name
    cls = operation_class(class_name) or REGISTRY.get(class_name)
    if cls is None:
        where = (f"{parent.where}, inner layer {spec.name!r} ({spec.class_name})" if parent is not None
                 else f"layer {spec.name!r} ({spec.class_name}, position {spec.index})")
        if class_name == "Lambda":
            why = "a Lambda layer holds Python code, which gpukb never runs"
        elif class_name.startswith(OPERATION_PREFIX):
            why = "gpukb does not implement this Keras operation"
        else:
            why = "gpukb does not implement this layer"
        raise UnsupportedLayerError(f"{where}: {why}. Supported layers: {supported_text()}.")
    return cls(spec, keras_major, parent=parent)


__all__ = ["Layer", "REGISTRY", "Run", "Sym", "build_layer", "invoke", "supported_text"]
