"""Bidirectional and TimeDistributed.

Sources: Keras 3 ``keras/src/layers/rnn/{bidirectional,time_distributed}.py``; tf.keras 2
``tf_keras/src/layers/rnn/{bidirectional,time_distributed}.py``.

Bidirectional runs a forward and a backward recurrent layer (the backward one a copy of the
forward config with ``go_backwards`` flipped, unless the file has a separate ``backward_layer``),
forces ``zero_output_for_mask = return_sequences`` on both (as both versions do), reverses the
backward output in time when it returns sequences, and merges (concat, sum, mul, ave, or None:
both outputs). With ``return_state`` the forward states then the backward states follow.

TimeDistributed applies its inner layer to every time step: as tf.keras (built-in inner layers
always take its reshape path), the inner layer runs once on ``(B * T, ...)``; Keras 3 stacks
per-step calls, which computes the same for layers that act on each sample.
"""

from __future__ import annotations

from typing import Any

from .._spec import LayerSpec
from .base import Layer, Run, Sym, shape_text
from .recurrent import Recurrent, path_text

_MERGE_MODES = ("concat", "sum", "mul", "ave", None)
# Inner layers of TimeDistributed: those that compute each sample on its own.
_PER_SAMPLE = ("Dense", "Activation", "Dropout", "GaussianNoise", "GaussianDropout",
               "SpatialDropout1D", "LayerNormalization", "BatchNormalization", "Flatten", "Reshape",
               "Embedding")


def _inner_spec(layer: Layer, key: str, weights: list) -> LayerSpec:
    value = layer.option(key)
    if not (isinstance(value, dict) and isinstance(value.get("class_name"), str)
            and isinstance(value.get("config"), dict)):
        raise layer.file_error(f"option {key!r} should be a layer config "
                               "({'class_name': ..., 'config': {...}}).")
    config = dict(value["config"])
    return LayerSpec(name=str(config.get("name", key)), class_name=value["class_name"],
                     config=config, weights=weights, index=layer.index)


def _build_inner(layer: Layer, spec: LayerSpec, allowed: tuple[str, ...]) -> Layer:
    from . import build_layer

    if spec.class_name not in allowed:
        from .._errors import UnsupportedLayerError

        raise UnsupportedLayerError(
            f"{layer.where}: its inner layer {spec.name!r} is a {spec.class_name}; gpukb supports "
            f"{layer.class_name}({' / '.join(allowed)}).")
    return build_layer(spec, layer.keras_major, parent=layer)


class Bidirectional(Layer):
    supports_masking = True
    call_params = {2: ("inputs", "training", "mask", "initial_state", "constants"),
                   3: ("sequences", "initial_state", "mask", "training")}

    def configure(self) -> None:
        self.merge_mode = self.option("merge_mode", "concat", allowed=_MERGE_MODES,
                                      why="Keras merge modes are concat, sum, mul, ave and None")
        self.option("num_constants", 0, allowed=(0, None), why="RNN constants are not supported")
        self._read.update(("layer", "backward_layer"))

    def _finish_options(self) -> None:
        super()._finish_options()
        # The inner layers, built now (not in configure) so that their weights can be split.
        allowed = ("LSTM", "GRU", "SimpleRNN")
        forward_spec = _inner_spec(self, "layer", [])
        forward_config = dict(forward_spec.config)
        if self.keras_major < 3:  # tf.keras renames the copies it makes
            forward_config["name"] = "forward_" + forward_spec.name
        if self.config.get("backward_layer") is not None:
            backward_spec = _inner_spec(self, "backward_layer", [])
            backward_config = dict(backward_spec.config)
            if self.keras_major < 3:
                backward_config["name"] = "backward_" + backward_spec.name
        else:
            backward_spec = forward_spec
            backward_config = dict(forward_spec.config)
            backward_config["go_backwards"] = not forward_spec.config.get("go_backwards", False)
            name = forward_spec.name
            name = name[len("forward_"):] if name.startswith("forward_") else name
            backward_config["name"] = "backward_" + name
        weights = list(self.spec.weights)
        forward = _build_inner(self, _replace(forward_spec, forward_config, []), allowed)
        backward = _build_inner(self, _replace(backward_spec, backward_config, []), allowed)
        assert isinstance(forward, Recurrent) and isinstance(backward, Recurrent)  # allowed
        self.forward, self.backward = forward, backward
        n_forward = 2 + self.forward.use_bias
        n_backward = 2 + self.backward.use_bias
        if len(weights) != n_forward + n_backward:
            raise self.file_error(f"its forward and backward layers need {n_forward} + {n_backward} "
                                  f"weight arrays, the file has {len(weights)}.")
        self.forward.weights = weights[:n_forward]
        self.backward.weights = weights[n_forward:]
        if self.forward.go_backwards == self.backward.go_backwards:
            raise self.file_error("its forward and backward layers have the same go_backwards.")
        for attribute in ("stateful", "return_sequences", "return_state"):
            if getattr(self.forward, attribute) != getattr(self.backward, attribute):
                raise self.file_error(f"its forward and backward layers differ in {attribute}.")
        self.return_sequences = self.forward.return_sequences
        self.return_state = self.forward.return_state
        self.stateful = self.forward.stateful

    @property
    def n_states(self) -> int:
        return self.forward.n_states + self.backward.n_states

    def count_params(self) -> int:
        return self.forward.count_params() + self.backward.count_params()

    def split_inputs(self, inputs: Any, initial_state: Any) -> tuple[Any, Any, Any]:
        """(x, forward initial states, backward initial states); tf.keras gives the states as
        extra tensors of a list input, half for each direction."""
        if isinstance(inputs, list):
            if len(inputs) > 1:
                if initial_state is not None:
                    raise self.file_error("a node gives initial states both in its inputs and as initial_state.")
                initial_state = inputs[1:]
            inputs = inputs[0]
        if initial_state is None:
            return inputs, None, None
        states = list(initial_state) if isinstance(initial_state, (list, tuple)) else [initial_state]
        if len(states) != self.n_states:
            raise self.file_error(f"it gets {len(states)} initial states; its two layers have "
                                  f"{self.forward.n_states} + {self.backward.n_states}.")
        half = len(states) // 2
        return inputs, states[:half], states[half:]

    def build(self, inputs: Any, initial_state: Any = None, **kwargs: Any) -> None:
        x, _, _ = self.split_inputs(inputs, initial_state)
        for inner in (self.forward, self.backward):
            inner.build(x)
            inner.built = True
        self.weights = self.forward.weights + self.backward.weights

    def infer(self, inputs: Any, initial_state: Any = None, **kwargs: Any) -> Any:
        x, forward_states, backward_states = self.split_inputs(inputs, initial_state)
        y = self.forward.infer(x, initial_state=forward_states)
        y_rev = self.backward.infer(x, initial_state=backward_states)
        states: list = []
        if self.return_state:
            states = y[1:] + y_rev[1:]
            y, y_rev = y[0], y_rev[0]
        if self.merge_mode == "concat":
            output: Any = [Sym(y.shape[:-1] + (y.shape[-1] + y_rev.shape[-1],), self.dtype)]
        elif self.merge_mode is None:
            output = [y, y_rev]
        else:
            if y.shape != y_rev.shape:
                raise self.file_error(f"merge_mode={self.merge_mode!r} needs equal outputs, got "
                                      f"{shape_text(y.shape)} and {shape_text(y_rev.shape)}.")
            output = [Sym(y.shape, self.dtype)]
        if not self.return_state and len(output) == 1:
            return output[0]
        return output + states

    def call(self, run: Run, inputs: Any, mask: Any = None, initial_state: Any = None,
             **kwargs: Any) -> Any:
        x, forward_given, backward_given = self.split_inputs(inputs, initial_state)
        batch = x.shape[0]
        finals = []
        outputs = []
        for inner, given, part in ((self.forward, forward_given, "forward"),
                                   (self.backward, backward_given, "backward")):
            key = f"{self.name}/{part}"
            states = inner.starting_states(run, key, batch, given, inner.n_states,
                                           lambda inner=inner: inner.zero_states(run, batch))
            output, new_states = inner.run_rnn(run, x, mask, states,
                                               zero_output_for_mask=self.return_sequences)
            if inner.stateful:
                run.kept_states[key] = new_states
            finals += new_states
            outputs.append(output)
        run.final_states[self.name] = finals
        y, y_rev = outputs
        if self.return_sequences:
            y_rev = y_rev[:, ::-1]
        if self.merge_mode == "concat":
            merged: list = [run.xp.concatenate([y, y_rev], axis=-1)]
        elif self.merge_mode == "sum":
            merged = [y + y_rev]
        elif self.merge_mode == "ave":
            merged = [(y + y_rev) / 2]
        elif self.merge_mode == "mul":
            merged = [y * y_rev]
        else:
            merged = [y, y_rev]
        if not self.return_state:
            return merged[0] if len(merged) == 1 else merged
        return merged + finals

    def compute_mask(self, inputs: Any, mask: Any) -> Any:
        if isinstance(mask, list):
            mask = mask[0]
        if self.return_sequences:
            output_mask: Any = [mask, mask] if not self.merge_mode else mask
        else:
            output_mask = [None, None] if not self.merge_mode else None
        if self.return_state and (self.keras_major < 3 or self.stateful):
            # Keras 3 adds state masks only for stateful layers (then its code fails); tf.keras
            # always does.
            state_mask = [None] * self.forward.n_states
            if isinstance(output_mask, list):
                return output_mask + state_mask * 2
            return [output_mask] + state_mask * 2
        return output_mask

    def describe(self, backend: str = "cpu") -> str:
        return path_text(backend) + ", both directions"


def _replace(spec: LayerSpec, config: dict, weights: list) -> LayerSpec:
    return LayerSpec(name=str(config.get("name", spec.name)), class_name=spec.class_name,
                     config=config, weights=weights, index=spec.index)


class TimeDistributed(Layer):
    supports_masking = True
    call_params = {2: ("inputs", "training", "mask"), 3: ("inputs", "training", "mask")}

    def configure(self) -> None:
        self._read.add("layer")

    def _finish_options(self) -> None:
        super()._finish_options()
        self.inner = _build_inner(self, _inner_spec(self, "layer", list(self.spec.weights)), _PER_SAMPLE)

    def build(self, inputs: Any, **kwargs: Any) -> None:
        x = self.input_sym(inputs, min_ndim=3)
        self.inner.build(Sym((None,) + x.shape[2:], x.dtype))
        self.inner.built = True
        self.weights = self.inner.weights

    def infer(self, inputs: Any, **kwargs: Any) -> Any:
        x = self.input_sym(inputs, min_ndim=3)
        inner = self.inner.infer(Sym((None,) + x.shape[2:], x.dtype))
        if not isinstance(inner, Sym):
            raise self.file_error(f"its inner layer {self.inner.name!r} returns several tensors.")
        return Sym(x.shape[:2] + inner.shape[1:], inner.dtype)

    def count_params(self) -> int:
        return self.inner.count_params()

    def count_non_trainable_params(self) -> int:
        return max(super().count_non_trainable_params(), self.inner.count_non_trainable_params())

    def call(self, run: Run, inputs: Any, mask: Any = None, **kwargs: Any) -> Any:
        B, T = inputs.shape[0], inputs.shape[1]
        flat = inputs.reshape((B * T,) + tuple(inputs.shape[2:]))
        inner_kwargs = {}
        if "mask" in self.inner.params() and mask is not None:
            inner_kwargs["mask"] = mask.reshape((B * T,) + tuple(mask.shape[2:]))
        if self.inner.autocast:
            flat = self.inner.cast_inputs(run, flat)
        y = self.inner.call(run, flat, **inner_kwargs)
        return y.reshape((B, T) + tuple(y.shape[1:]))

    def compute_mask(self, inputs: Any, mask: Any) -> Any:
        if self.keras_major >= 3 or mask is None:
            return mask  # Keras 3: the default, the input mask
        # tf.keras: the inner layer's mask of the reshaped call, reshaped back; else the input
        # mask reduced to (B, T).
        B, T = inputs.shape[0], inputs.shape[1]
        inner_mask = mask.reshape((B * T,) + tuple(mask.shape[2:]))
        inner_inputs = inputs.reshape((B * T,) + tuple(inputs.shape[2:]))
        output_mask = self.inner.compute_mask(inner_inputs, inner_mask) if self.inner.supports_masking else None
        if output_mask is None:
            output_mask = mask
            while output_mask.ndim > 2:
                output_mask = output_mask.any(axis=-1)
            return output_mask
        return output_mask.reshape((B, T) + tuple(output_mask.shape[1:]))

    def describe(self, backend: str = "cpu") -> str:
        return f"{self.inner.class_name} on every step"

