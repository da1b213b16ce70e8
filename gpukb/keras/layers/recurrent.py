"""LSTM, GRU and SimpleRNN: ``gpukb.rnn`` with a ``gpukb.cells`` cell (so the fused kernels run).

Sources: Keras 3 ``keras/src/layers/rnn/{rnn,lstm,gru,simple_rnn}.py`` (``RNN.call``,
``inner_loop``, ``compute_mask``); tf.keras 2 ``tf_keras/src/layers/rnn/{base_rnn,lstm,gru,
simple_rnn}.py`` (``RNN.__call__``, ``_process_inputs``, ``call``, ``compute_mask``). Both call
their backend's ``rnn`` with ``go_backwards``, the mask, ``zero_output_for_mask`` and
``return_all_outputs=return_sequences``, which is what ``gpukb.rnn`` implements; outputs with
``go_backwards`` stay in processing order, as in Keras.

States, in order of precedence: the layer's ``initial_state`` in the graph (Keras 3: the
``initial_state`` argument; tf.keras: the extra tensors of a list input), then
``predict(initial_states=...)``, then a stateful layer's kept states, then zeros. tf.keras, for a
stateful layer that also gets an ``initial_state``, keeps its recorded states when any is
non-zero (``_process_inputs``); Keras 3 takes the ``initial_state``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ... import activations as cell_activations
from ... import cells
from ..._frontend import rnn
from .base import Layer, Run, Sym, flatten, shape_text

_GATES = {"LSTM": 4, "GRU": 3, "SimpleRNN": 1}
# gpukb's name for Keras 3's hard_sigmoid (relu6(x + 3) / 6); plain hard_sigmoid is tf.keras 2's.
KERAS3_HARD_SIGMOID = "hard_sigmoid_keras3"


class Recurrent(Layer):
    supports_masking = True
    call_params = {2: ("inputs", "mask", "training", "initial_state"),
                   3: ("sequences", "initial_state", "mask", "training")}

    def configure(self) -> None:
        self.gates = _GATES[self.class_name]
        self.n_states = 2 if self.class_name == "LSTM" else 1
        self.units = self.option("units", kind=int)
        if self.units <= 0:
            raise self.file_error(f"option units={self.units} should be positive.")
        self.use_bias = self.option("use_bias", True, kind=bool)
        self.activation = self._cell_activation("activation", "tanh")
        if self.class_name != "SimpleRNN":
            self.recurrent_activation = self._cell_activation("recurrent_activation", "sigmoid")
        if self.class_name == "GRU":
            self.reset_after = self.option("reset_after", True, kind=bool)
        self.return_sequences = self.option("return_sequences", False, kind=bool)
        self.return_state = self.option("return_state", False, kind=bool)
        self.go_backwards = self.option("go_backwards", False, kind=bool)
        self.stateful = self.option("stateful", False, kind=bool)
        self.zero_output_for_mask = self.option("zero_output_for_mask", False, kind=bool)
        self.option("time_major", False, allowed=(False,), why="gpukb takes batch-major inputs")
        self.option("num_constants", 0, allowed=(0, None), why="RNN constants are not supported")
        # No effect at inference: dropout masks, the unrolled or cuDNN implementation.
        self.ignore("unroll", "dropout", "recurrent_dropout", "implementation", "use_cudnn",
                    "unit_forget_bias")
        self.batch_size: int | None = None
        self._cells: dict[Any, cells.Cell] = {}

    def _cell_activation(self, key: str, default: str) -> str:
        from .activations import activation_name

        value = self.option(key, default)
        name = activation_name(value)
        if name == "hard_sigmoid" and self.keras_major >= 3:
            return KERAS3_HARD_SIGMOID
        if name not in cell_activations.SUPPORTED:
            names = ", ".join(n for n in cell_activations.SUPPORTED if n != KERAS3_HARD_SIGMOID)
            raise self.unsupported(key, value, f"gpukb's recurrent cells implement {names}")
        return name

    # -- load time ----------------------------------------------------------------------------

    def split_inputs(self, inputs: Any, initial_state: Any) -> tuple[Any, Any]:
        """tf.keras passes initial states as extra tensors of a list input ([x, h, c])."""
        if isinstance(inputs, list):
            states = inputs[1:]
            inputs = inputs[0]
            if states:
                if initial_state is not None:
                    raise self.file_error("a node gives initial states both in its inputs and as initial_state.")
                initial_state = states
        if initial_state is not None and not isinstance(initial_state, (list, tuple)):
            initial_state = [initial_state]
        return inputs, initial_state

    def build(self, inputs: Any, initial_state: Any = None, **kwargs: Any) -> None:
        x, _ = self.split_inputs(inputs, initial_state)
        x = self.input_sym(x, ndim=3)
        D = x.shape[-1]
        if D is None:  # unknown feature size: the kernel says it
            D = self.weights[0].shape[0] if self.weights and np.ndim(self.weights[0]) == 2 else 0
        width = self.gates * self.units
        expected: list[tuple[str, tuple[Any, ...]]] = [("kernel", (D, width)),
                                                       ("recurrent_kernel", (self.units, width))]
        if self.use_bias:
            bias_shape = (2, width) if self.class_name == "GRU" and self.reset_after else (width,)
            expected.append(("bias", bias_shape))
        why = f"units={self.units}, use_bias={self.use_bias}, input features {D}"
        if self.class_name == "GRU":
            why += f", reset_after={self.reset_after}"
        self.check_weights(expected, why)
        self.input_dim = D
        if self.stateful:
            self.batch_size = x.shape[0]
            if self.batch_size is None:
                raise self.file_error("it is stateful, but its input's batch size is unknown "
                                      "(Keras needs a fixed batch_shape for stateful RNNs).")

    def infer(self, inputs: Any, initial_state: Any = None, **kwargs: Any) -> Any:
        x, states = self.split_inputs(inputs, initial_state)
        x = self.input_sym(x, ndim=3)
        if x.shape[-1] not in (None, self.input_dim):
            raise self.file_error(f"it is called on shape {shape_text(x.shape)}, but its kernel takes "
                                  f"{self.input_dim} features.")
        if states is not None:
            self.check_state_syms(states, x.shape[0])
        return self.output_syms(x)

    def check_state_syms(self, states: list, batch: Any) -> None:
        if len(states) != self.n_states or not all(isinstance(s, Sym) for s in states):
            raise self.file_error(f"it gets {len(states)} initial states; it has {self.n_states}.")
        for s in states:
            if s.ndim != 2 or s.shape[1] not in (None, self.units):
                raise self.file_error(f"an initial state has shape {shape_text(s.shape)}; its states are "
                                      f"(batch, {self.units}).")

    def output_syms(self, x: Sym) -> Any:
        B, T = x.shape[0], x.shape[1]
        out = Sym((B, T, self.units) if self.return_sequences else (B, self.units), self.dtype)
        if not self.return_state:
            return out
        return [out] + [Sym((B, self.units), self.dtype) for _ in range(self.n_states)]

    # -- running ------------------------------------------------------------------------------

    def cell_for(self, run: Run) -> cells.Cell:
        cell = self._cells.get(run.library)
        if cell is None:
            weights = self.weights_for(run)
            bias = weights[2] if self.use_bias else None
            if self.class_name == "LSTM":
                cell = cells.lstm(weights[0], weights[1], bias, self.activation, self.recurrent_activation)
            elif self.class_name == "GRU":
                cell = cells.gru(weights[0], weights[1], bias, self.reset_after, self.activation,
                                 self.recurrent_activation)
            else:
                cell = cells.simple_rnn(weights[0], weights[1], bias, self.activation)
            # A loaded model's weights are fixed: the fused kernels pack them once (Cell.freeze)
            self._cells[run.library] = cell = cell.freeze()
        return cell

    def zero_states(self, run: Run, batch: int) -> list:
        return [run.xp.zeros((batch, self.units), dtype=self.dtype) for _ in range(self.n_states)]

    def run_rnn(self, run: Run, x: Any, mask: Any, states: list,
                zero_output_for_mask: bool | None = None) -> tuple[Any, list]:
        """``(output, new_states)`` of the layer on ``x`` from ``states``."""
        mask = flatten(mask)[0]
        if zero_output_for_mask is None:
            zero_output_for_mask = self.zero_output_for_mask
        states = [s if s.dtype == self.dtype else run.xp.asarray(s, dtype=self.dtype) for s in states]
        last, outputs, new_states = rnn(
            self.cell_for(run), x, states, go_backwards=self.go_backwards, mask=mask,
            zero_output_for_mask=zero_output_for_mask, return_all_outputs=self.return_sequences,
            backend=run.rnn_backend)
        return (outputs if self.return_sequences else last), list(new_states)

    def starting_states(self, run: Run, key: str, batch: int, given: Any, n: int,
                        zeros: Any) -> list:
        """The states a (possibly stateful) layer starts from, by the precedence above."""
        kept = run.kept_states.get(key) if self.stateful else None
        if kept is not None:
            kept = [_on_library(run, s) for s in kept]
            if kept[0].shape[0] != batch:
                raise ValueError(
                    f"layer {key!r} is stateful with batch size {kept[0].shape[0]}; it got a batch of "
                    f"{batch} (predict with batch_size={kept[0].shape[0]}, or reset_states()).")
        if given is not None:
            if kept is not None and self.keras_major < 3 and any(bool((s != 0).any()) for s in kept):
                return kept
            return list(given)
        if key in run.initial_states:
            return list(run.initial_states[key])
        if kept is not None:
            return kept
        if self.stateful and self.batch_size is not None and batch != self.batch_size:
            raise ValueError(f"layer {key!r} is stateful with batch size {self.batch_size}; it got a "
                             f"batch of {batch}.")
        return zeros()

    def finish(self, run: Run, key: str, states: list) -> None:
        if self.stateful:
            run.kept_states[key] = states
        run.final_states[key] = states

    def call(self, run: Run, inputs: Any, mask: Any = None, initial_state: Any = None, **kwargs: Any) -> Any:
        x, given = self.split_inputs(inputs, initial_state)
        batch = x.shape[0]
        states = self.starting_states(run, self.name, batch, given, self.n_states,
                                      lambda: self.zero_states(run, batch))
        output, new_states = self.run_rnn(run, x, mask, states)
        self.finish(run, self.name, new_states)
        if self.return_state:
            return [output] + new_states
        return output

    def compute_mask(self, inputs: Any, mask: Any) -> Any:
        mask = flatten(mask)[0]
        output_mask = mask if self.return_sequences else None
        if self.return_state:
            return [output_mask] + [None] * self.n_states
        return output_mask

    def describe(self, backend: str = "cpu") -> str:
        return path_text(backend)


def path_text(backend: str) -> str:
    """Which loop ``gpukb.rnn`` runs a ``gpukb.cells`` cell with on ``backend``."""
    if backend == "cpu":
        return "fused cpu kernel (Numba)"
    if backend == "cuda":
        from ..._dispatch import get_backend

        path = getattr(get_backend("cuda", check_available=False), "cell_path", "auto")
        if path == "generic":
            return "generic loop (cuda cell_path='generic')"
        return "fused cuda kernels (persistent or per step)"
    return f"generic loop (backend {backend!r} has no fused cell kernel)" if backend else ""


def _on_library(run: Run, array: Any) -> Any:
    """A kept state as an array of the run's library (a model may be called with NumPy, then
    CuPy arrays)."""
    if type(array).__module__.split(".")[0] == run.xp.__name__:
        return array
    host = array.get() if hasattr(array, "get") else np.asarray(array)
    return run.asarray(host)
