"""Keras recurrent cells (LSTM, GRU, SimpleRNN) as plain step functions over NumPy or CuPy arrays.

A cell holds a Keras layer's weights in the Keras layout, so ``layer.get_weights()`` drops in, and
is called as an ``rnn`` step function: ``cell(step_input, states) -> (output, new_states)``. It is
the reference implementation that the fused kernels are checked against, and names its activations
(see ``gpukb.activations``) so that a kernel can compile the same cell.

Layouts (tf.keras 2):
- LSTM: kernel (D, 4H), recurrent_kernel (H, 4H), bias (4H,); gates i, f, c, o; states [h, c].
- GRU: kernel (D, 3H), recurrent_kernel (H, 3H); gates z, r, h; bias (2, 3H) with
  ``reset_after=True`` (row 0 input bias, row 1 recurrent bias), (3H,) otherwise; states [h].
- SimpleRNN: kernel (D, H), recurrent_kernel (H, H), bias (H,); states [h].
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

import numpy as np

from ._dtypes import dtype_kind, numpy_dtype

from . import activations as _activations
from .kernels import cells as _kernel_cells  # the layouts every kernel uses (no heavy imports)


# --------------------------------------------------------------------------------------------
# Weight checks
# --------------------------------------------------------------------------------------------

def _is_array(value: Any) -> bool:
    # Duck-typed so that CuPy (or any array a backend's asarray returns) works without importing it.
    return all(hasattr(value, attr) for attr in ("shape", "dtype", "ndim", "__matmul__"))


def _library(value: Any) -> str:
    """Top-level module of an array's type: 'numpy', 'cupy', ..."""
    return type(value).__module__.split(".")[0]


def _check_weights(kind: str, weights: dict, shapes: dict) -> tuple[Any, np.dtype]:
    """Check types, shapes and dtypes of ``weights`` (name -> array or None for an absent bias).

    ``shapes`` maps each name to its expected shape. Returns (array namespace, dtype).
    """
    present = {name: w for name, w in weights.items() if w is not None}
    for name, w in present.items():
        if not _is_array(w):
            raise TypeError(
                f"{kind}: {name} must be an array (NumPy or CuPy), not {type(w).__name__}."
            )
    libraries = {name: _library(w) for name, w in present.items()}
    if len(set(libraries.values())) > 1:
        seen = ", ".join(f"{name} from {lib}" for name, lib in libraries.items())
        raise TypeError(f"{kind}: all weights must come from one array library; got {seen}.")
    for name, w in present.items():
        expected = shapes[name]
        if tuple(w.shape) != expected:
            raise ValueError(
                f"{kind}: {name} must have shape {expected}, got shape {tuple(w.shape)}."
            )
    dtype = numpy_dtype(weights["kernel"].dtype)
    for name, w in present.items():
        if numpy_dtype(w.dtype).kind != "f":
            raise ValueError(f"{kind}: {name} must have a floating dtype, got {w.dtype}.")
        if numpy_dtype(w.dtype) != dtype:
            raise ValueError(
                f"{kind}: all weights must have one dtype; kernel is {dtype} but {name} is "
                f"{w.dtype}."
            )
    library = libraries["kernel"]
    # Importing the array's own top module is free (it is already loaded); never imports CuPy
    # for NumPy weights.
    return importlib.import_module(library), dtype


def _check_rank2(kind: str, name: str, value: Any, what: str) -> None:
    if not _is_array(value):
        raise TypeError(
            f"{kind}: {name} must be an array (NumPy or CuPy), not {type(value).__name__}."
        )
    if value.ndim != 2:
        raise ValueError(f"{kind}: {name} must be 2-D {what}, got shape {tuple(value.shape)}.")


# --------------------------------------------------------------------------------------------
# Cells
# --------------------------------------------------------------------------------------------

class Cell:
    """Base class: weights, activation names, and the step-function call protocol."""

    layout: Any = None  # the kernels' Layout of this cell (gpukb.kernels.cells): names, gates, states
    kind = ""
    gates = 1  # kernel columns per unit
    n_states = 1

    def __init__(self, kernel: Any, recurrent_kernel: Any, bias: Any = None) -> None:
        kind = type(self).__name__
        _check_rank2(kind, "kernel", kernel, f"(input_dim, {self.gates} * units)")
        _check_rank2(kind, "recurrent_kernel", recurrent_kernel, f"(units, {self.gates} * units)")
        units = recurrent_kernel.shape[0]
        if units == 0:
            raise ValueError(
                f"{kind}: recurrent_kernel must have at least one row (units > 0), got shape "
                f"{tuple(recurrent_kernel.shape)}."
            )
        input_dim = kernel.shape[0]
        width = self.gates * units
        shapes = {
            "kernel": (input_dim, width),
            "recurrent_kernel": (units, width),
            "bias": self._bias_shape(units),
        }
        self._xp, self.dtype = _check_weights(
            kind, {"kernel": kernel, "recurrent_kernel": recurrent_kernel, "bias": bias}, shapes
        )
        self.kernel = kernel
        self.recurrent_kernel = recurrent_kernel
        self.bias = bias
        self.units = int(units)
        self.input_dim = int(input_dim)

    # Subclasses override these.
    @property
    def kernel_layout(self) -> Any:
        """The kernels' Layout of this cell as configured (its ``kind`` selects the kernel)."""
        return self.layout

    def _bias_shape(self, units: int) -> tuple:
        return self.kernel_layout.bias_shape(units)

    def _step(self, x, states):
        raise NotImplementedError

    def _config(self) -> dict:
        return {}

    @property
    def use_bias(self) -> bool:
        return self.bias is not None

    @property
    def state_size(self) -> tuple:
        return (self.units,) * self.n_states

    def _act(self, name: str) -> Callable:
        return _activations.get(name, self._xp)

    def __call__(self, step_input: Any,
                 states: list[Any] | tuple[Any, ...]) -> tuple[Any, list[Any]]:
        """One time step: ``(output, new_states)``.

        ``states`` is a tuple ``(h, c)`` / ``(h,)``, possibly followed by constants (ignored).
        """
        kind = type(self).__name__
        if not isinstance(states, (list, tuple)):
            raise TypeError(f"{kind}: states must be a tuple or list, not {type(states).__name__}.")
        if len(states) < self.n_states:
            raise ValueError(
                f"{kind}: expected {self.n_states} state(s) {self._state_names()}, "
                f"got {len(states)}."
            )
        current = tuple(states[: self.n_states])
        if not (_is_array(step_input) and tuple(step_input.shape[1:]) == (self.input_dim,)):
            raise ValueError(
                f"{kind}: step_input must have shape (batch, {self.input_dim}), got "
                f"{_shape_text(step_input)}."
            )
        batch = step_input.shape[0]
        arrays = (("step_input", step_input),) + tuple(
            (f"states[{i}]", s) for i, s in enumerate(current)
        )
        for i, s in enumerate(current):
            if not _is_array(s) or tuple(s.shape) != (batch, self.units):
                raise ValueError(
                    f"{kind}: states[{i}] must have shape ({batch}, {self.units}), got "
                    f"{_shape_text(s)}."
                )
        for name, a in arrays:
            if _library(a) != self._xp.__name__:
                raise TypeError(
                    f"{kind}: {name} is a {_library(a)} array but the weights are "
                    f"{self._xp.__name__} arrays; convert one side (see Cell.converted)."
                )
        step_input = self._in_cell_dtype("step_input", step_input)
        current = tuple(self._in_cell_dtype(f"states[{i}]", s) for i, s in enumerate(current))
        return self._step(step_input, current)

    def _in_cell_dtype(self, name: str, a: Any) -> Any:
        """``a`` (of the weights' library) in the cell's dtype.

        Mixed dtypes would silently compute in the wider one, so the cell computes in its own: a
        floating array of another dtype is cast, as a Keras layer casts floating inputs to its
        compute dtype; an integer or bool array is an error (Keras does not cast those either).
        """
        if dtype_kind(a.dtype) != "f":
            raise ValueError(
                f"{type(self).__name__}: {name} has dtype {a.dtype}, expected {self.dtype} "
                "(floating arrays are cast to it; integer and bool ones are not)."
            )
        if a.dtype == self.kernel.dtype:  # one library, so its own dtype objects compare
            return a
        return self._xp.asarray(a, dtype=self.kernel.dtype)

    def cast_rnn_arguments(self, inputs: Any, initial_states: Any) -> tuple[Any, Any]:
        """``(inputs, initial_states)`` of an ``rnn`` call with this cell, floating arrays cast
        once, up front, to the cell's dtype; integer or bool ones are a ValueError.

        Keras's RNN layer does the same: the layer casts its floating inputs to its compute dtype,
        and (Keras 3) ``RNN.call`` casts the initial states to the cell's compute dtype. Anything
        the cell cannot take (nested inputs, arrays of another library) is left as it is, for
        rnn's own checks to report.
        """
        inputs = self._cast_argument("inputs", inputs)
        if isinstance(initial_states, (list, tuple)):
            cast = [self._cast_argument(f"initial_states[{i}]", s) for i, s in enumerate(initial_states)]
            if any(new is not old for new, old in zip(cast, initial_states)):
                container = type(initial_states)
                initial_states = container(*cast) if hasattr(container, "_fields") else container(cast)
        return inputs, initial_states

    def _cast_argument(self, name: str, value: Any) -> Any:
        if not _is_array(value) or _library(value) != self._xp.__name__:
            return value
        return self._in_cell_dtype(name, value)

    def _state_names(self) -> str:
        return f"[{', '.join(self.layout.state_names)}]"

    _WEIGHTS = ("kernel", "recurrent_kernel", "bias")

    def freeze(self) -> "Cell":
        """Fix the weights and return the cell: NumPy weights become private, read-only copies
        (nothing outside can change them, and in-place changes raise), and a fused CPU call
        then packs them for its GEMMs once, on the first call, and reuses the packing (every
        call packs otherwise: at H = 1024 and T = 20 about a third of a small batch's call).
        Weights of other libraries are not copied (NumPy alone has read-only arrays). Either
        way the weights cannot be assigned any more (AttributeError). For serving fixed weights
        (``gpukb.keras`` freezes the cells of a loaded model); the results are the same."""
        if getattr(self, "_frozen", False):
            return self
        numpy_weights = True
        for name in self._WEIGHTS:
            value = getattr(self, name)
            if isinstance(value, np.ndarray):
                value = np.array(value, copy=True)
                value.flags.writeable = False
                object.__setattr__(self, name, value)
            elif value is not None:
                numpy_weights = False
        if numpy_weights:   # what the cpu kernels derive from the weights (gpukb/backends/cpu.py)
            object.__setattr__(self, "_kernel_cache", {})
        object.__setattr__(self, "_frozen", True)
        return self

    @property
    def frozen(self) -> bool:
        """Whether ``freeze`` made the weights fixed."""
        return getattr(self, "_frozen", False)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in self._WEIGHTS:
            if getattr(self, "_frozen", False):
                raise AttributeError(f"{type(self).__name__}: {name} of a frozen cell cannot be "
                                     "assigned (freeze() fixed the weights); build a new cell.")
            if "input_dim" in self.__dict__:   # after __init__: the new weight must fit the cell
                self._check_new_weight(name, value)
        object.__setattr__(self, name, value)

    def _check_new_weight(self, name: str, value: Any) -> None:
        """A weight assigned to a built cell must keep its shape, dtype and library (the cell's
        units, input_dim and dtype were read from the weights it was built with: a kernel of
        another shape was used as if it fitted, its extra rows ignored)."""
        kind = type(self).__name__
        weights = {w: getattr(self, w) for w in self._WEIGHTS}
        weights[name] = value
        width = self.gates * self.units
        shapes = {"kernel": (self.input_dim, width), "recurrent_kernel": (self.units, width),
                  "bias": self._bias_shape(self.units)}
        _check_weights(kind, weights, shapes)   # and one dtype and library, as the others'

    def __reduce__(self) -> tuple:
        # Pickled (pickle, copy.deepcopy, a process pool's arguments) as the constructor's
        # arguments: the cell's caches (its namespace module, the kernels' packed weights and
        # plans, the checked call structures) cannot all be pickled and are remade on use.
        return (_rebuilt, (type(self), self.kernel, self.recurrent_kernel, self.bias,
                           self._config(), self.frozen))

    def converted(self, asarray: Callable) -> "Cell":
        """A cell of the same kind with every weight passed through ``asarray``: this one when
        that changes none of them (so a frozen cell keeps what the kernels derived from it)."""
        bias = None if self.bias is None else asarray(self.bias)
        kernel, recurrent_kernel = asarray(self.kernel), asarray(self.recurrent_kernel)
        if kernel is self.kernel and recurrent_kernel is self.recurrent_kernel and bias is self.bias:
            return self
        return type(self)(kernel, recurrent_kernel, bias, **self._config())

    def __repr__(self) -> str:
        extras = "".join(f", {k}={v!r}" for k, v in self._config().items())
        return (
            f"{type(self).__name__}(units={self.units}, input_dim={self.input_dim}, "
            f"dtype={self.dtype}{extras})"
        )


def _rebuilt(cls: type, kernel: Any, recurrent_kernel: Any, bias: Any, config: dict,
             frozen: bool) -> "Cell":
    """A cell from its pickled state (``Cell.__reduce__``)."""
    cell = cls(kernel, recurrent_kernel, bias, **config)
    return cell.freeze() if frozen else cell


def _shape_text(value: Any) -> str:
    if _is_array(value):
        return f"shape {tuple(value.shape)}"
    return f"a {type(value).__name__}"


class LSTMCell(Cell):
    layout = _kernel_cells.lstm.LAYOUT
    kind, gates, n_states = layout.name, layout.gates, layout.n_states

    def __init__(self, kernel: Any, recurrent_kernel: Any, bias: Any = None,
                 activation: str | None = "tanh",
                 recurrent_activation: str | None = "sigmoid") -> None:
        self.activation = _activations.standardize(activation)
        self.recurrent_activation = _activations.standardize(recurrent_activation)
        super().__init__(kernel, recurrent_kernel, bias)
        self._f_act = self._act(self.activation)
        self._f_rec = self._act(self.recurrent_activation)

    def _config(self) -> dict:
        return {"activation": self.activation, "recurrent_activation": self.recurrent_activation}

    def _step(self, x, states):
        h_tm1, c_tm1 = states
        H = self.units
        z = x @ self.kernel + h_tm1 @ self.recurrent_kernel
        if self.bias is not None:
            z = z + self.bias
        i = self._f_rec(z[:, :H])
        f = self._f_rec(z[:, H:2 * H])
        c = f * c_tm1 + i * self._f_act(z[:, 2 * H:3 * H])
        o = self._f_rec(z[:, 3 * H:])
        h = o * self._f_act(c)
        return h, [h, c]


class GRUCell(Cell):
    layout = _kernel_cells.gru.LAYOUT
    kind, gates, n_states = layout.name, layout.gates, layout.n_states

    def __init__(self, kernel: Any, recurrent_kernel: Any, bias: Any = None,
                 reset_after: bool = True, activation: str | None = "tanh",
                 recurrent_activation: str | None = "sigmoid") -> None:
        if not isinstance(reset_after, (bool, np.bool_)):
            raise TypeError(
                f"GRUCell: reset_after must be a bool, not {type(reset_after).__name__}."
            )
        self.reset_after = bool(reset_after)
        self.activation = _activations.standardize(activation)
        self.recurrent_activation = _activations.standardize(recurrent_activation)
        super().__init__(kernel, recurrent_kernel, bias)
        self._f_act = self._act(self.activation)
        self._f_rec = self._act(self.recurrent_activation)

    @property
    def kernel_layout(self) -> Any:
        gru = _kernel_cells.gru
        return gru.LAYOUT if self.reset_after else gru.LAYOUT_RESET_BEFORE

    def _config(self) -> dict:
        return {
            "reset_after": self.reset_after,
            "activation": self.activation,
            "recurrent_activation": self.recurrent_activation,
        }

    def _step(self, x, states):
        (h_tm1,) = states
        H = self.units
        if self.bias is None:
            input_bias = recurrent_bias = None
        elif self.reset_after:
            input_bias, recurrent_bias = self.bias[0], self.bias[1]
        else:
            input_bias, recurrent_bias = self.bias, None
        matrix_x = x @ self.kernel
        if input_bias is not None:
            matrix_x = matrix_x + input_bias
        if self.reset_after:
            # Keras 2 / cuDNN variant: the reset gate multiplies (h @ U_h + b_h).
            matrix_inner = h_tm1 @ self.recurrent_kernel
            if recurrent_bias is not None:
                matrix_inner = matrix_inner + recurrent_bias
        else:
            matrix_inner = h_tm1 @ self.recurrent_kernel[:, : 2 * H]
        z = self._f_rec(matrix_x[:, :H] + matrix_inner[:, :H])
        r = self._f_rec(matrix_x[:, H:2 * H] + matrix_inner[:, H:2 * H])
        if self.reset_after:
            recurrent_h = r * matrix_inner[:, 2 * H:]
        else:
            recurrent_h = (r * h_tm1) @ self.recurrent_kernel[:, 2 * H:]
        hh = self._f_act(matrix_x[:, 2 * H:] + recurrent_h)
        h = z * h_tm1 + (1 - z) * hh
        return h, [h]


class SimpleRNNCell(Cell):
    layout = _kernel_cells.simple_rnn.LAYOUT
    kind, gates, n_states = layout.name, layout.gates, layout.n_states

    def __init__(self, kernel: Any, recurrent_kernel: Any, bias: Any = None,
                 activation: str | None = "tanh") -> None:
        self.activation = _activations.standardize(activation)
        super().__init__(kernel, recurrent_kernel, bias)
        self._f_act = self._act(self.activation)

    def _config(self) -> dict:
        return {"activation": self.activation}

    def _step(self, x, states):
        (h_tm1,) = states
        h = x @ self.kernel
        if self.bias is not None:
            h = h + self.bias
        output = self._f_act(h + h_tm1 @ self.recurrent_kernel)
        return output, [output]


# --------------------------------------------------------------------------------------------
# Factories (the public names)
# --------------------------------------------------------------------------------------------

def lstm(kernel: Any, recurrent_kernel: Any, bias: Any = None, activation: str | None = "tanh",
         recurrent_activation: str | None = "sigmoid") -> LSTMCell:
    """An LSTM cell from tf.keras LSTM weights: kernel (D, 4H), recurrent (H, 4H), bias (4H,)."""
    return LSTMCell(kernel, recurrent_kernel, bias, activation, recurrent_activation)


def gru(kernel: Any, recurrent_kernel: Any, bias: Any = None, reset_after: bool = True,
        activation: str | None = "tanh", recurrent_activation: str | None = "sigmoid") -> GRUCell:
    """A GRU cell from tf.keras GRU weights; bias (2, 3H) if ``reset_after`` else (3H,)."""
    return GRUCell(kernel, recurrent_kernel, bias, reset_after, activation, recurrent_activation)


def simple_rnn(kernel: Any, recurrent_kernel: Any, bias: Any = None,
               activation: str | None = "tanh") -> SimpleRNNCell:
    """A SimpleRNN cell from tf.keras weights: kernel (D, H), recurrent (H, H), bias (H,)."""
    return SimpleRNNCell(kernel, recurrent_kernel, bias, activation)
