"""One direction of one recurrent layer as PyTorch custom operators over gpukb's kernels.

- ``gpukb_torch::rnn_forward``: ``gpukb.rnn_vjp(..., return_residuals=True)`` with a
  ``gpukb.cells`` LSTM or GRU made from torch's weights (``_weights``), on zero-copy views of the
  tensors (``_arrays``); it returns the residuals (what the backward needs beyond the arguments:
  every step's output and, on the CPU, the kept gate pre-activations) as extra outputs, all but
  the first, every step's output, which is the op's own output (autograd saves that one): a
  custom op's outputs may not share memory, and a copy of it took 0.46 ms of a 4.8 ms forward at
  LSTM (8, 200, 32, 256). An empty tensor closes the list when there were residuals, so that the
  backward knows to put the output back in front;
- ``gpukb_torch::rnn_backward``: its gradients through ``gpukb.rnn_pullback`` on those residuals,
  so a forward and backward runs the forward once.

``keep_residuals=False``: the forward runs ``gpukb.rnn``, which keeps nothing, and returns no
residuals. The module passes it when no gradient can be asked for (``torch.no_grad``, or nothing
requires one), and with ``recompute=True`` to save memory: a backward then gets
``recompute=True`` and runs the forward again, ``gpukb.rnn_vjp``'s, whose pullback it calls at
once (the same gradients, bitwise, on the CPU), so autograd keeps only the op's arguments.

Both are opaque to ``torch.compile`` (``register_fake`` gives the shapes, the residuals' from
``gpukb.rnn_residual_specs``) and the first has the second as its autograd formula. Their bodies
are ``run_forward`` and ``gradients_from_residuals``, which the drop-ins' eager route
(``_direction``) calls without the operators.

Layout: ``input`` is ``(B, T, D)``, or ``(T, B, D)`` with ``time_major``; ``mask`` (or None) has
the same leading two dimensions, True = a valid step. Masked steps hold the state and output zeros
(``zero_output_for_mask``), so a right-padded mask gives what torch gives for a packed sequence.
``reverse`` runs the sequence backwards (``go_backwards``) and returns the outputs in input-time
order, as torch's reverse direction does. Outputs: ``(output, h_n, c_n, residuals)``; a GRU's
``c_n`` is an empty tensor (a custom op always returns the same number of tensors).
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

import gpukb
import gpukb_torch

from . import _arrays, _openmp, _weights

Tensor = torch.Tensor


def _check_mode(mode: str) -> None:
    if mode not in _weights.GATES:
        raise ValueError(f"gpukb_torch::rnn_forward: mode must be 'lstm' or 'gru', got {mode!r}.")


def _keras_cell(mode: str, kernel, recurrent_kernel, bias):
    """gpukb's cell of a torch layer from its weights in the Keras layout (arrays)."""
    _check_mode(mode)
    if mode == "lstm":
        return gpukb.cells.lstm(kernel, recurrent_kernel, bias)
    return gpukb.cells.gru(kernel, recurrent_kernel, bias, reset_after=True)


# Not torch.empty(...).numpy(): a fake kernel's tensors are FakeTensors, which have no memory.
_NUMPY_DTYPES = {torch.float16: np.dtype(np.float16), torch.float32: np.dtype(np.float32),
                 torch.float64: np.dtype(np.float64), torch.bool: np.dtype(np.bool_)}
_TORCH_DTYPES = {v: k for k, v in _NUMPY_DTYPES.items()}


def _before_kernels(tensor: Tensor) -> None:
    """CPU: torch's spinning OpenMP threads let go first (see _openmp), unless turned off."""
    if tensor.device.type == "cpu" and gpukb_torch.release_openmp_threads:
        _openmp.release()


def _stand_in(tensor: Optional[Tensor]):
    """A zero-stride array of the tensor's shape and dtype on its device's array library, with
    no memory of its own: what a fake kernel hands ``gpukb.rnn_residual_specs``."""
    if tensor is None:
        return None
    dtype = _NUMPY_DTYPES[tensor.dtype]
    shape = tuple(int(n) for n in tensor.shape)
    if tensor.device.type == "cuda":
        import cupy

        return cupy.broadcast_to(cupy.zeros((), dtype), shape)
    return np.broadcast_to(np.zeros((), dtype), shape)


def _time_flip(outputs, time_major: bool):
    """gpukb's go_backwards outputs are in processing order; torch's are in input-time order."""
    return outputs[::-1] if time_major else outputs[:, ::-1]


def keras_weights(mode, w_ih, w_hh, b_ih, b_hh) -> list[Optional[Tensor]]:
    """The layer's weights in the Keras layout of gpukb's cells (``_weights.to_keras``)."""
    _check_mode(mode)
    return list(_weights.to_keras(mode, w_ih, w_hh, b_ih, b_hh))


def cell_of(mode, weights, convert=_arrays.as_array):
    """gpukb's cell of one direction from its weights in the Keras layout (``keras_weights``),
    made arrays by ``convert``."""
    return _keras_cell(mode, *(convert(w) for w in weights))


def _call_arguments(mode, input, h0, c0, mask, weights, reverse, time_major,
                    convert=_arrays.as_array, cell=None):
    """Positional and keyword arguments of the ``gpukb.rnn_vjp``/``rnn_pullback`` call of one
    direction, ``weights`` in the Keras layout (``keras_weights``; or ``cell``, a cell already
    made), its tensors made arrays by ``convert``."""
    states = [convert(h0)] + ([convert(c0)] if mode == "lstm" else [])
    kwargs = dict(go_backwards=reverse, time_major=time_major, zero_output_for_mask=True,
                  mask=None if mask is None else convert(mask))
    if cell is None:
        cell = cell_of(mode, weights, convert)
    return (cell, convert(input), states), kwargs


def run_forward(mode, input, h0, c0, mask, weights, reverse, time_major, keep_residuals,
                cell=None):
    """One direction of one layer forward, on gpukb's kernels: ``(output, h_n, c_n,
    residuals, pullback)``, tensors sharing gpukb's results' memory (c_n an empty tensor for a
    GRU). ``weights`` are in the Keras layout (``keras_weights``), or None with ``cell``, a cell
    already made of them (``_direction.frozen_cell``). ``residuals``: with
    ``keep_residuals``, what ``gradients_from_residuals`` needs beyond the arguments: every
    step's output (input-time order: the output tensor itself), then the rest of
    ``gpukb.rnn_vjp``'s residuals; else, or when the plan keeps none, empty. ``pullback``:
    ``gpukb.rnn_vjp``'s, holding those residuals (None without ``keep_residuals``)."""
    args, kwargs = _call_arguments(mode, input, h0, c0, mask, weights, reverse, time_major,
                                   cell=cell)
    _before_kernels(input)
    with _arrays.on_device_of(input):
        if keep_residuals:
            (_, outputs, states), pullback, residuals = gpukb.rnn_vjp(
                *args, **kwargs, return_residuals=True)
        else:   # no gradient will be asked for: gpukb.rnn, which keeps nothing
            (_, outputs, states), pullback, residuals = gpukb.rnn(*args, **kwargs), None, ()
    if reverse:
        outputs = _time_flip(outputs, time_major)
    output = _arrays.as_tensor(outputs)
    h_n = _arrays.as_tensor(states[0])
    c_n = _arrays.as_tensor(states[1]) if mode == "lstm" else h0.new_empty(0)
    kept = [output, *(_arrays.as_tensor(r) for r in residuals[1:])] if residuals else []
    return output, h_n, c_n, kept, pullback


def gradients_from_residuals(mode, input, h0, c0, mask, weights, reverse, time_major,
                             residuals, d_output, d_h_n, d_c_n, pullback=None) -> list[Tensor]:
    """``[d_input, d_h0, d_c0, d_w_ih, d_w_hh, d_b_ih, d_b_hh]`` (torch's layout; absent
    arguments' gradients are empty tensors) of one direction, its pullback rebuilt from
    ``run_forward``'s residuals, or, when there are none, from a forward run again here; or
    ``pullback``, ``run_forward``'s own, when given (the same gradients, bitwise: nothing to
    rebuild). ``d_output``/``d_h_n``/``d_c_n`` may be None (zeros)."""
    d_output = (torch.zeros((*input.shape[:2], h0.shape[-1]), dtype=input.dtype,
                            device=input.device) if d_output is None else d_output.contiguous())
    d_states = [_arrays.as_array(torch.zeros_like(h0) if d_h_n is None else d_h_n.contiguous())]
    if mode == "lstm":
        d_states.append(_arrays.as_array(
            torch.zeros_like(h0) if d_c_n is None or not d_c_n.numel() else d_c_n.contiguous()))
    _before_kernels(input)
    with _arrays.on_device_of(input):
        if pullback is None:
            args, kwargs = _call_arguments(mode, input, h0, c0, mask, weights, reverse,
                                           time_major)
            if not residuals:   # the forward that keeps what the backward needs, freed on return
                _, pullback = gpukb.rnn_vjp(*args, **kwargs)
            else:
                kept = [_arrays.as_array(r) for r in residuals]
                if reverse:   # the output back in processing order (gpukb's residual),
                    kept[0] = _time_flip(kept[0], time_major).copy()   # contiguous, as it was
                pullback = gpukb.rnn_pullback(tuple(kept), *args, **kwargs)
        d_out = _arrays.as_array(d_output)
        grads = pullback(_time_flip(d_out, time_major) if reverse else d_out,
                         d_new_states=d_states)
    d_bias = grads.weights.get("bias")
    d_weights = _weights.grads_to_torch(
        mode, _arrays.as_tensor(grads.weights["kernel"]),
        _arrays.as_tensor(grads.weights["recurrent_kernel"]),
        None if d_bias is None else _arrays.as_tensor(d_bias))
    d_states_0 = [_arrays.as_tensor(g) for g in grads.initial_states]
    return [_arrays.as_tensor(grads.inputs), d_states_0[0],
            d_states_0[1] if mode == "lstm" else input.new_empty(0),
            *(input.new_empty(0) if g is None else g for g in d_weights)]


@torch.library.custom_op("gpukb_torch::rnn_forward", mutates_args=())
def rnn_forward(mode: str, input: Tensor, h0: Tensor, c0: Optional[Tensor],
                mask: Optional[Tensor], w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor],
                b_hh: Optional[Tensor], reverse: bool, time_major: bool, keep_residuals: bool
                ) -> tuple[Tensor, Tensor, Tensor, list[Tensor]]:
    output, h_n, c_n, kept, _ = run_forward(mode, input, h0, c0, mask,
                                            keras_weights(mode, w_ih, w_hh, b_ih, b_hh),
                                            reverse, time_major, keep_residuals)
    # The output stands for the first residual (autograd saves it; see _setup_context); an
    # empty tensor closes the list when there were residuals.
    closing = [input.new_empty(0)] if kept else []
    output, h_n, c_n, *rest = _unaliased([output, h_n, c_n, *kept[1:]],
                                         [input, h0, c0, mask, w_ih, w_hh, b_ih, b_hh])
    return output, h_n, c_n, rest + closing


@rnn_forward.register_fake
def _(mode, input, h0, c0, mask, w_ih, w_hh, b_ih, b_hh, reverse, time_major, keep_residuals):
    hidden = w_hh.shape[1]
    output = input.new_empty((*input.shape[:2], hidden))
    c_n = torch.empty_like(h0) if mode == "lstm" else h0.new_empty(0)
    args, kwargs = _call_arguments(mode, input, h0, c0, mask,
                                   keras_weights(mode, w_ih, w_hh, b_ih, b_hh), reverse,
                                   time_major, convert=_stand_in)
    specs = gpukb.rnn_residual_specs(*args, **kwargs) if keep_residuals else []
    kept = [input.new_empty(shape, dtype=_TORCH_DTYPES[dtype]) for shape, dtype in specs[1:]]
    return output, torch.empty_like(h0), c_n, kept + [input.new_empty(0)] if specs else kept


@torch.library.custom_op("gpukb_torch::rnn_backward", mutates_args=())
def rnn_backward(mode: str, input: Tensor, h0: Tensor, c0: Optional[Tensor],
                 mask: Optional[Tensor], w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor],
                 b_hh: Optional[Tensor], reverse: bool, time_major: bool, recompute: bool,
                 residuals: list[Tensor], d_output: Tensor, d_h_n: Tensor, d_c_n: Tensor
                 ) -> list[Tensor]:
    """Gradients ``[d_input, d_h0, d_c0, d_w_ih, d_w_hh, d_b_ih, d_b_hh]``; the ones of absent
    arguments (a GRU's c0, no bias) are empty tensors. ``residuals``: ``rnn_forward``'s output
    (input-time order, as it returned it), then the residuals it returned without their closing
    empty tensor; or with ``recompute`` none (a forward run with ``keep_residuals=False``): the
    forward runs again."""
    if recompute and residuals:
        raise ValueError(f"gpukb_torch::rnn_backward: recompute=True takes no residuals, got "
                         f"{len(residuals)}.")
    results = gradients_from_residuals(mode, input, h0, c0, mask,
                                       keras_weights(mode, w_ih, w_hh, b_ih, b_hh), reverse,
                                       time_major, residuals, d_output, d_h_n, d_c_n)
    return _unaliased(results, [input, h0, c0, mask, w_ih, w_hh, b_ih, b_hh, *residuals,
                                d_output, d_h_n, d_c_n])


def _unaliased(results: list[Tensor], arguments: list[Optional[Tensor]]) -> list[Tensor]:
    """``results``, each sharing memory with no argument and no other result (a custom op's
    rule): gpukb may hand back an array it was given (a state no step changed), so such a
    result is copied."""
    seen = {t.untyped_storage().data_ptr() for t in arguments if t is not None and t.numel()}
    fresh = []
    for t in results:
        if t.numel():
            if t.untyped_storage().data_ptr() in seen:
                t = t.clone()
            seen.add(t.untyped_storage().data_ptr())
        fresh.append(t)
    return fresh


@rnn_backward.register_fake
def _(mode, input, h0, c0, mask, w_ih, w_hh, b_ih, b_hh, reverse, time_major, recompute,
      residuals, d_output, d_h_n, d_c_n):
    like = [input, h0, c0, w_ih, w_hh, b_ih, b_hh]
    return [input.new_empty(0) if t is None else torch.empty_like(t) for t in like]


def _setup_context(ctx, inputs, output):
    mode, input, h0, c0, mask, w_ih, w_hh, b_ih, b_hh, reverse, time_major, keep = inputs
    residuals = output[3]
    if residuals:   # the op's output stands for the first residual (see rnn_forward)
        saved = [output[0], *residuals[:-1]]
    else:
        saved = []
    ctx.save_for_backward(input, h0, c0, mask, w_ih, w_hh, b_ih, b_hh, *saved)
    ctx.flags = (mode, reverse, time_major, not keep)
    # No gradient flows into the residuals, and an output without one comes as None (_backward
    # takes it as zeros): autograd otherwise made a zero tensor for each, the residuals' ~5H
    # values per sample and step included, at every backward.
    ctx.mark_non_differentiable(*residuals)
    ctx.set_materialize_grads(False)


def _backward(ctx, d_output, d_h_n, d_c_n, d_residuals):
    mode, reverse, time_major, recompute = ctx.flags
    input, h0, c0, mask, w_ih, w_hh, b_ih, b_hh, *residuals = ctx.saved_tensors
    # An output that took no part in the loss may come as None: its cotangent is zeros.
    d_output = torch.zeros((*input.shape[:2], w_hh.shape[1]), dtype=input.dtype,
                           device=input.device) if d_output is None else d_output
    d_h_n = torch.zeros_like(h0) if d_h_n is None else d_h_n
    if d_c_n is None or mode != "lstm":
        d_c_n = torch.zeros_like(h0) if mode == "lstm" else h0.new_empty(0)
    grads = rnn_backward(mode, input, h0, c0, mask, w_ih, w_hh, b_ih, b_hh, reverse, time_major,
                         recompute, residuals, d_output, d_h_n, d_c_n)
    d_input, d_h0, d_c0, d_w_ih, d_w_hh, d_b_ih, d_b_hh = grads
    return (None, d_input, d_h0, None if c0 is None else d_c0, None, d_w_ih, d_w_hh,
            None if b_ih is None else d_b_ih, None if b_hh is None else d_b_hh, None, None, None)


rnn_forward.register_autograd(_backward, setup_context=_setup_context)
