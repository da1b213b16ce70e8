"""gpukb_torch.LSTM / GRU against torch.nn.LSTM / GRU (the same weights), against a plain float64
loop for masks torch cannot express, and the custom operators' own checks (gradcheck, opcheck,
torch.compile)."""

import subprocess
import sys
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="gpukb-torch needs PyTorch")
gpukb_torch = pytest.importorskip("gpukb_torch", reason="gpukb-torch is not installed")

from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence  # noqa: E402

from gpukb_torch._ops import rnn_backward, rnn_forward  # noqa: E402

F64 = torch.float64
PAIRS = {"lstm": (gpukb_torch.LSTM, torch.nn.LSTM), "gru": (gpukb_torch.GRU, torch.nn.GRU)}


def _pair(mode, *args, dtype=F64, **kwargs):
    """(gpukb module, torch module) with the same weights (torch's loaded from gpukb's)."""
    ours_cls, torch_cls = PAIRS[mode]
    torch.manual_seed(0)
    ours = ours_cls(*args, dtype=dtype, **kwargs)
    theirs = torch_cls(*args, dtype=dtype, **kwargs)
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


def _hx(mode, shape, dtype=F64, requires_grad=True):
    make = lambda: torch.randn(shape, dtype=dtype, requires_grad=requires_grad)  # noqa: E731
    return (make(), make()) if mode == "lstm" else make()


def _flat(result):
    """(output, h_n) / (output, (h_n, c_n)) -> a list of tensors (a packed output's data)."""
    output, hidden = result
    output = output.data if hasattr(output, "batch_sizes") else output
    return [output, *(hidden if isinstance(hidden, tuple) else (hidden,))]


def _grads(module, result, leaves):
    """Gradients of a fixed random projection of every result, w.r.t. ``leaves`` and the
    module's parameters (None where nothing flowed). The projection is drawn on the CPU and moved
    to each result's device, so that every device sees the same one (test_dropin_cuda.py)."""
    gen = torch.Generator().manual_seed(1)
    loss = sum((t * torch.randn(t.shape, generator=gen, dtype=t.dtype).to(t.device)).sum()
               for t in _flat(result))
    params = [p for _, p in sorted(module.named_parameters())]
    return torch.autograd.grad(loss, [*leaves, *params], allow_unused=True)


def _assert_close_lists(ours, theirs, **tol):
    assert len(ours) == len(theirs)
    for i, (a, b) in enumerate(zip(ours, theirs)):
        torch.testing.assert_close(a, b, msg=lambda m: f"item {i}: {m}", **tol)


def _assert_matches(ours, theirs, inputs, leaves, assert_close_lists=_assert_close_lists):
    """ours(*inputs) against theirs(*inputs), float64: outputs and states to 1e-10, gradients
    (``_grads``) to 1e-9."""
    result, expected = ours(*inputs), theirs(*inputs)
    assert_close_lists(_flat(result), _flat(expected), rtol=1e-10, atol=1e-12)
    assert_close_lists(_grads(ours, result, leaves), _grads(theirs, expected, leaves),
                       rtol=1e-9, atol=1e-11)


# ---------------------------------------------------------------------------------------------
# Parameters: names, shapes, initialisation
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["lstm", "gru"])
def test_parameters_and_initialisation_are_torchs(mode):
    ours_cls, torch_cls = PAIRS[mode]
    for kwargs in ({}, {"num_layers": 2, "bidirectional": True, "bias": False}):
        torch.manual_seed(3)
        ours = ours_cls(3, 5, **kwargs)
        torch.manual_seed(3)
        theirs = torch_cls(3, 5, **kwargs)
        a, b = ours.state_dict(), theirs.state_dict()
        assert list(a) == list(b)  # names and order
        for name in b:
            assert torch.equal(a[name], b[name]), name  # one seed, the same weights
        ours.load_state_dict(b)
        theirs.load_state_dict(a)  # both ways, strict


# ---------------------------------------------------------------------------------------------
# Against torch.nn.LSTM / GRU: outputs, final states, every gradient
# ---------------------------------------------------------------------------------------------

CONFIGS = [
    dict(kwargs={}, batched=True, hx=False),
    dict(kwargs={"num_layers": 2, "bidirectional": True}, batched=True, hx=True),
    dict(kwargs={"batch_first": True, "bias": False}, batched=True, hx=True),
    dict(kwargs={"bidirectional": True, "batch_first": True}, batched=False, hx=True),
]


@pytest.mark.parametrize("mode", ["lstm", "gru"])
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: "-".join(map(str, c["kwargs"])) or
                         "plain")
def test_matches_torch_outputs_states_and_gradients(mode, config):
    kwargs = config["kwargs"]
    ours, theirs = _pair(mode, 3, 4, **kwargs)
    T, B, D = 6, 3, 3
    shape = (T, D) if not config["batched"] else ((B, T, D) if kwargs.get("batch_first")
                                                  else (T, B, D))
    x = torch.randn(shape, dtype=F64, requires_grad=True)
    layers = kwargs.get("num_layers", 1) * (2 if kwargs.get("bidirectional") else 1)
    hx = None
    leaves = [x]
    if config["hx"]:
        hx = _hx(mode, (layers, B, 4) if config["batched"] else (layers, 4))
        leaves += list(hx) if mode == "lstm" else [hx]
    _assert_matches(ours, theirs, (x, hx), leaves)


@pytest.mark.parametrize("mode", ["lstm", "gru"])
def test_float32_matches_torch(mode):
    ours, theirs = _pair(mode, 3, 8, num_layers=2, dtype=torch.float32)
    x = torch.randn(10, 4, 3, requires_grad=True)
    result, expected = ours(x), theirs(x)
    assert result[0].dtype == torch.float32
    _assert_close_lists(_flat(result), _flat(expected), rtol=1e-5, atol=1e-6)
    _assert_close_lists(_grads(ours, result, [x]), _grads(theirs, expected, [x]),
                        rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Packed sequences and masks
# ---------------------------------------------------------------------------------------------

LENGTHS = torch.tensor([3, 7, 1, 5, 7])  # unsorted, with ties and a length-1 sequence


@pytest.mark.parametrize("mode", ["lstm", "gru"])
def test_packed_sequence_matches_torch(mode):
    """Both directions, two layers, hx given: torch reverses each sequence within its length."""
    ours, theirs = _pair(mode, 3, 4, num_layers=2, bidirectional=True)
    x = torch.randn(7, 5, 3, dtype=F64, requires_grad=True)
    hx = _hx(mode, (4, 5, 4))
    leaves = [x, *(hx if mode == "lstm" else [hx])]
    pack = lambda: pack_padded_sequence(x, LENGTHS, enforce_sorted=False)  # noqa: E731
    result, expected = ours(pack(), hx), theirs(pack(), hx)  # one graph each
    output = result[0]
    assert isinstance(output, torch.nn.utils.rnn.PackedSequence)
    for field in ("batch_sizes", "sorted_indices", "unsorted_indices"):
        assert torch.equal(getattr(output, field), getattr(expected[0], field))
    _assert_close_lists(_flat(result), _flat(expected), rtol=1e-10, atol=1e-12)
    _assert_close_lists(_grads(ours, result, leaves), _grads(theirs, expected, leaves),
                        rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("mode", ["lstm", "gru"])
def test_packed_sequence_equals_the_right_padded_mask(mode):
    """The mask extension: a right-padded mask gives the packed results, zeros at padded steps
    (what pad_packed_sequence gives), and final states at each sequence's last valid step."""
    ours, _ = _pair(mode, 3, 4, bidirectional=True, batch_first=True)
    x = torch.randn(5, 7, 3, dtype=F64)
    mask = torch.arange(7)[None, :] < LENGTHS[:, None]
    packed_out, packed_hidden = ours(pack_padded_sequence(x, LENGTHS, batch_first=True,
                                                          enforce_sorted=False))
    masked_out, masked_hidden = ours(x, mask=mask)
    padded, _ = pad_packed_sequence(packed_out, batch_first=True)
    assert torch.equal(masked_out, padded)
    assert torch.equal(masked_out[~mask], torch.zeros_like(masked_out[~mask]))
    _assert_close_lists(_flat((masked_out, masked_hidden))[1:],
                        _flat((masked_out, packed_hidden))[1:], rtol=0, atol=0)


def _reference(mode, module, x, hx, mask):
    """A plain float64 loop over torch.nn.LSTMCell/GRUCell (batch_first, one layer, both
    directions) with gpukb's mask rule: a masked step holds every state and outputs zeros."""
    cell_cls = torch.nn.LSTMCell if mode == "lstm" else torch.nn.GRUCell
    outputs, finals = [], []
    for direction, suffix in enumerate(["", "_reverse"]):
        cell = cell_cls(x.shape[-1], module.hidden_size, dtype=F64)
        cell.weight_ih = getattr(module, "weight_ih_l0" + suffix)
        cell.weight_hh = getattr(module, "weight_hh_l0" + suffix)
        cell.bias_ih = getattr(module, "bias_ih_l0" + suffix)
        cell.bias_hh = getattr(module, "bias_hh_l0" + suffix)
        state = tuple(h[direction] for h in hx) if mode == "lstm" else hx[direction]
        out = [None] * x.shape[1]
        steps = range(x.shape[1])
        for t in (reversed(steps) if direction else steps):
            new = cell(x[:, t], state)
            keep = mask[:, t, None]
            if mode == "lstm":
                state = tuple(torch.where(keep, n, s) for n, s in zip(new, state))
                out[t] = torch.where(keep, new[0], 0.0)
            else:
                state = torch.where(keep, new, state)
                out[t] = torch.where(keep, new, 0.0)
        outputs.append(torch.stack(out, dim=1))
        finals.append(state)
    output = torch.cat(outputs, dim=-1)
    if mode == "lstm":
        return output, tuple(torch.stack([f[i] for f in finals]) for i in range(2))
    return output, torch.stack(finals)


@pytest.mark.parametrize("mode", ["lstm", "gru"])
def test_any_mask_matches_a_plain_loop(mode):
    """Masks torch cannot express: random holes, left padding, an all-masked row, a first
    step masked; both directions; outputs, states and gradients."""
    ours, _ = _pair(mode, 2, 3, bidirectional=True, batch_first=True)
    B, T = 5, 6
    gen = torch.Generator().manual_seed(2)
    mask = torch.rand((B, T), generator=gen) < 0.6
    mask[0] = False                                 # all masked
    mask[1] = torch.arange(T) >= 2                  # left padding
    mask[2, 0], mask[2, 1:] = False, True           # first step masked
    x = torch.randn(B, T, 2, dtype=F64, requires_grad=True)
    hx = _hx(mode, (2, B, 3))
    leaves = [x, *(hx if mode == "lstm" else [hx])]
    result = ours(x, hx, mask=mask)
    expected = _reference(mode, ours, x, hx, mask)
    _assert_close_lists(_flat(result), _flat(expected), rtol=1e-10, atol=1e-12)
    _assert_close_lists(_grads(ours, result, leaves), _grads(ours, expected, leaves),
                        rtol=1e-9, atol=1e-11)


def test_unbatched_input_with_a_mask_is_one_row_of_a_batch():
    ours, _ = _pair("lstm", 2, 3, bidirectional=True)
    x = torch.randn(6, 2, dtype=F64)
    mask = torch.tensor([True, False, True, True, False, True])
    output, (h, c) = ours(x, mask=mask)
    batched, (h_b, c_b) = ours(x[:, None], mask=mask[None])
    assert output.shape == (6, 6) and h.shape == (2, 3)
    _assert_close_lists([output, h, c], [batched[:, 0], h_b[:, 0], c_b[:, 0]], rtol=0, atol=0)


def test_importing_the_plugin_does_not_import_torch_until_a_module_is_named():
    code = ("import sys, gpukb, gpukb_torch; gpukb.list_backends(); "
            "assert 'torch' not in sys.modules, 'torch was imported'; "
            "gpukb_torch.LSTM; assert 'torch' in sys.modules")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


# ---------------------------------------------------------------------------------------------
# Dropout
# ---------------------------------------------------------------------------------------------

def test_dropout_acts_between_layers_in_training_only():
    ours, theirs = _pair("gru", 3, 4, num_layers=2, dropout=0.5)
    x = torch.randn(5, 2, 3, dtype=F64)
    ours.eval(), theirs.eval()
    torch.testing.assert_close(ours(x)[0], theirs(x)[0])  # eval: no dropout, as torch
    ours.train()
    torch.manual_seed(0)
    first = ours(x)[0]
    assert not torch.allclose(first, ours.eval()(x)[0])
    one_layer, _ = _pair("gru", 3, 4, num_layers=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's warning: dropout with one layer does nothing
        dropped, _ = _pair("gru", 3, 4, num_layers=1, dropout=0.5)
    torch.testing.assert_close(dropped.train()(x)[0], one_layer(x)[0])


# ---------------------------------------------------------------------------------------------
# The custom operator: gradcheck, opcheck, torch.compile
# ---------------------------------------------------------------------------------------------

def _op_args(mode, reverse, time_major, requires_grad=True):
    T, B, D, H = 4, 3, 2, 3
    G = {"lstm": 4, "gru": 3}[mode] * H
    gen = torch.Generator().manual_seed(4)
    rand = lambda *s: (0.5 * torch.randn(s, generator=gen, dtype=F64)  # noqa: E731
                       ).requires_grad_(requires_grad)
    mask = torch.rand((T, B) if time_major else (B, T), generator=gen) < 0.7
    x = rand(T, B, D) if time_major else rand(B, T, D)
    c0 = rand(B, H) if mode == "lstm" else None
    return (mode, x, rand(B, H), c0, mask, rand(G, D), rand(G, H), rand(G), rand(G), reverse,
            time_major, True)


@pytest.mark.parametrize("mode", ["lstm", "gru"])
@pytest.mark.parametrize("reverse,time_major", [(False, False), (True, True)])
def test_gradcheck(mode, reverse, time_major):
    args = list(_op_args(mode, reverse, time_major))
    positions = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor) and a.requires_grad]

    def op(*tensors):
        for i, t in zip(positions, tensors):
            args[i] = t
        return rnn_forward(*args)[:3]   # the residuals (4th) are for the backward only

    assert torch.autograd.gradcheck(op, [args[i] for i in positions])


@pytest.mark.parametrize("mode", ["lstm", "gru"])
def test_opcheck(mode):
    torch.library.opcheck(rnn_forward, _op_args(mode, reverse=True, time_major=False))
    without = _op_args(mode, reverse=False, time_major=True, requires_grad=False)[:-1] + (False,)
    torch.library.opcheck(rnn_forward, without)


def test_inference_keeps_nothing_for_a_backward(monkeypatch):
    # Under torch.no_grad (or with nothing requiring a gradient) the op runs gpukb.rnn: no kept
    # gate buffers, no rnn_vjp; with gradients on, rnn_vjp keeps them for the backward.
    import gpukb

    module = gpukb_torch.LSTM(3, 4, batch_first=True, dtype=F64)
    x = torch.randn(2, 5, 3, dtype=F64)
    expected, _ = module(x)
    vjp_calls = []
    real_vjp = gpukb.rnn_vjp
    monkeypatch.setattr(gpukb, "rnn_vjp", lambda *a, **k: vjp_calls.append(1) or real_vjp(*a, **k))
    with torch.no_grad():
        output, _ = module(x)
    module.requires_grad_(False)
    output2, _ = module(x)
    assert vjp_calls == []
    torch.testing.assert_close(output, expected, rtol=0, atol=0)
    torch.testing.assert_close(output2, expected, rtol=0, atol=0)
    module.requires_grad_(True)
    module(x)
    assert vjp_calls == [1]


def test_torch_compile_sees_one_op_per_direction_without_graph_breaks():
    module = gpukb_torch.LSTM(3, 4, batch_first=True, bidirectional=True, dtype=F64)
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager")  # fullgraph: no breaks
    x = torch.randn(2, 5, 3, dtype=F64, requires_grad=True)
    output, (h, c) = compiled(x)
    expected, (h_e, c_e) = module(x)
    torch.testing.assert_close(output, expected, rtol=0, atol=0)
    (grad,) = torch.autograd.grad(output.sum() + c.sum(), x)
    (grad_e,) = torch.autograd.grad(expected.sum() + c_e.sum(), x)
    torch.testing.assert_close(grad, grad_e, rtol=0, atol=0)


@pytest.mark.parametrize("mode", ["lstm", "gru"])
def test_backward_does_not_run_the_forward_again(mode, monkeypatch):
    """The forward op keeps gpukb's residuals; the backward rebuilds the pullback from them:
    one forward kernel run per forward and backward."""
    from gpukb.kernels import cpu as kernels

    runs = []
    run_cell = kernels.run_cell

    def counted(*args, **kwargs):
        runs.append(1)
        return run_cell(*args, **kwargs)

    monkeypatch.setattr(kernels, "run_cell", counted)
    ours, theirs = _pair(mode, 3, 4, batch_first=True)
    x = torch.randn(2, 5, 3, dtype=F64, requires_grad=True)
    output, _ = ours(x)
    assert len(runs) == 1
    (grad,) = torch.autograd.grad(output.sum(), x)
    assert len(runs) == 1
    (grad_e,) = torch.autograd.grad(theirs(x)[0].sum(), x)
    torch.testing.assert_close(grad, grad_e)


# ---------------------------------------------------------------------------------------------
# The eager route (_direction): plain CPU tensors skip the custom operators' machinery
# ---------------------------------------------------------------------------------------------

def _run_both_routes(monkeypatch, module, inputs, leaves, mask=None):
    """{route: outputs, states and gradients} of one call on each route ("eager", "op")."""
    from gpukb_torch import _direction, _ops

    eager = _direction.eager
    op_calls = []
    real_op = _ops.rnn_forward
    monkeypatch.setattr(_ops, "rnn_forward", lambda *a: op_calls.append(1) or real_op(*a))
    results = {}
    for route in ("eager", "op"):
        monkeypatch.setattr(_direction, "eager", eager if route == "eager" else lambda t: False)
        op_calls.clear()
        result = module(*inputs, mask=mask)
        results[route] = _flat(result) + list(_grads(module, result, leaves))
        calls = module.num_layers * module._directions
        assert len(op_calls) == (0 if route == "eager" else calls), route
    return results


@pytest.mark.parametrize("mode", ["lstm", "gru"])
@pytest.mark.parametrize("kwargs", [{"batch_first": True},
                                    {"num_layers": 2, "bidirectional": True, "bias": False},
                                    {"bidirectional": True, "recompute": True}],
                         ids=["plain", "2-layers-bidirectional-no-bias", "recompute"])
def test_eager_route_equals_the_operators_bitwise(mode, kwargs, monkeypatch):
    """float32, hx given, a mask with holes: the same outputs, states and gradients (of the
    input, hx and every weight) on both routes; and the eager route calls no operator."""
    kwargs = dict(kwargs)
    recompute = kwargs.pop("recompute", False)
    module, _ = _pair(mode, 3, 4, dtype=torch.float32, **kwargs)
    module.recompute = recompute
    B, T = 3, 6
    gen = torch.Generator().manual_seed(6)
    mask = torch.rand((B, T), generator=gen) < 0.7
    x = torch.randn((B, T, 3) if module.batch_first else (T, B, 3), generator=gen,
                    requires_grad=True)
    hx = _hx(mode, (module.num_layers * module._directions, B, 4), dtype=torch.float32)
    leaves = [x, *(hx if mode == "lstm" else [hx])]
    results = _run_both_routes(monkeypatch, module, (x, hx), leaves, mask=mask)
    for i, (a, b) in enumerate(zip(results["eager"], results["op"])):
        assert (a is None) == (b is None) and (a is None or torch.equal(a, b)), f"item {i}"


def test_eager_route_is_taken_only_for_plain_cpu_tensors_outside_tracing():
    from torch.utils._python_dispatch import TorchDispatchMode

    from gpukb_torch._direction import eager

    x = torch.randn(2, 3)
    assert eager((x, None, torch.nn.Parameter(x)))

    class Subclass(torch.Tensor):
        pass

    assert not eager((x, x.as_subclass(Subclass)))
    assert not eager((x, torch.empty(2, 3, device="meta")))

    class PassThrough(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            return func(*args, **(kwargs or {}))

    with PassThrough():
        assert not eager((x,))
    routes = []
    torch.func.grad(lambda t: routes.append(eager((t,))) or t.sum())(x)
    assert routes == [False]   # torch.func transforms: the operators

    def traced(t):
        routes.append(eager((t,)))
        return t + 1

    routes.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)   # torch.jit.trace: deprecated
        torch.jit.trace(traced, (x,), check_trace=False)
    assert routes == [False]


def test_eager_route_backward_twice_with_retain_graph_and_inplace_check():
    """retain_graph: a second backward gives the same gradients (the pullback is rebuilt from
    the saved tensors each time); a saved argument changed in place is torch's usual error."""
    module, _ = _pair("lstm", 3, 4, batch_first=True)
    x = torch.randn(2, 5, 3, dtype=F64, requires_grad=True)
    output, _ = module(x)
    (first,) = torch.autograd.grad(output.sum(), x, retain_graph=True)
    (second,) = torch.autograd.grad(output.sum(), x)
    assert torch.equal(first, second)
    output, _ = module(x)
    with torch.no_grad():
        module.weight_hh_l0.add_(1.0)   # as an optimizer step between forward and backward
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        output.sum().backward()


@pytest.mark.parametrize("mode", ["lstm", "gru"])
def test_eager_route_gradcheck(mode):
    from gpukb_torch import _direction

    args = list(_op_args(mode, reverse=True, time_major=False))
    positions = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor) and a.requires_grad]

    def run(*tensors):
        for i, t in zip(positions, tensors):
            args[i] = t
        assert _direction.eager(tuple(args[1:9]))
        return _direction.run(*args[:11], differentiable=True, recompute=False)

    assert torch.autograd.gradcheck(run, [args[i] for i in positions])


# ---------------------------------------------------------------------------------------------
# recompute=True: no residuals kept, the forward runs again in the backward
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["lstm", "gru"])
@pytest.mark.parametrize("kwargs", [{"batch_first": True},
                                    {"num_layers": 2, "bidirectional": True}],
                         ids=["plain", "2-layers-bidirectional"])
def test_recompute_gives_the_same_results_and_gradients_bitwise(mode, kwargs, monkeypatch):
    """float32, hx given, a mask with holes; and the backward runs the forward again (one more
    kernel run per direction and layer)."""
    from gpukb.kernels import cpu as kernels

    runs = []
    run_cell = kernels.run_cell
    monkeypatch.setattr(kernels, "run_cell",
                        lambda *a, **k: runs.append(1) or run_cell(*a, **k))
    module, _ = _pair(mode, 3, 4, dtype=torch.float32, **kwargs)
    calls = module.num_layers * module._directions
    B, T = 3, 6
    gen = torch.Generator().manual_seed(5)
    mask = torch.rand((B, T), generator=gen) < 0.7
    x = torch.randn((B, T, 3) if module.batch_first else (T, B, 3), generator=gen,
                    requires_grad=True)
    hx = _hx(mode, (calls, B, 4), dtype=torch.float32)
    leaves = [x, *(hx if mode == "lstm" else [hx])]
    results = {}
    for recompute in (False, True):
        module.recompute = recompute
        runs.clear()
        result = module(x, hx, mask=mask)
        assert len(runs) == calls
        grads = _grads(module, result, leaves)
        assert len(runs) == calls * (2 if recompute else 1)
        results[recompute] = _flat(result) + list(grads)
    for i, (a, b) in enumerate(zip(results[False], results[True])):
        assert torch.equal(a, b), f"item {i} differs"


def _saved_elements(mode, recompute):
    """Items of the tensors autograd saves for one forward, outside the arguments' memory."""
    module = PAIRS[mode][0](3, 4, batch_first=True, dtype=F64, recompute=recompute)
    x = torch.randn(2, 5, 3, dtype=F64, requires_grad=True)
    hx = _hx(mode, (1, 2, 4))
    mask = torch.ones(2, 5, dtype=torch.bool)
    arguments = [x, *(hx if mode == "lstm" else [hx]), mask, *module.parameters()]
    known = {t.untyped_storage().data_ptr() for t in arguments}
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        output, _ = module(x, hx, mask=mask)
    return output, sum(t.numel() for t in saved if t.untyped_storage().data_ptr() not in known)


@pytest.mark.parametrize("mode", ["lstm", "gru"])
def test_recompute_keeps_no_residuals(mode):
    output, extra = _saved_elements(mode, recompute=False)
    # cpu's fused vjp keeps (outputs, 4 pre-activations, cell) = 6H, GRU 7H, per sample and step;
    # the eager route (plain CPU tensors) also keeps the weights in the Keras layout for its
    # backward: G x (D + H) and the bias (a GRU's is two rows)
    gates = 4 if mode == "lstm" else 3
    weights = gates * 4 * (3 + 4) + gates * 4 * (1 if mode == "lstm" else 2)
    assert extra == (6 if mode == "lstm" else 7) * 4 * 2 * 5 + weights
    output, extra = _saved_elements(mode, recompute=True)
    assert extra == 0  # only the op's arguments (their memory: no copies either)
    assert output.grad_fn is not None


@pytest.mark.parametrize("mode", ["lstm", "gru"])
def test_opcheck_recompute(mode):
    """The forward without residuals, under autograd (opcheck's aot_dispatch runs its backward,
    which recomputes), and the recomputing backward op itself."""
    args = _op_args(mode, reverse=True, time_major=False)[:-1] + (False,)
    torch.library.opcheck(rnn_forward, args)
    output, h_n, c_n, kept = rnn_forward(*args)
    assert kept == []
    grads_in = [torch.randn_like(output), torch.randn_like(h_n), torch.randn_like(c_n)]
    detached = [a.detach() if isinstance(a, torch.Tensor) else a for a in args[:-1]]
    torch.library.opcheck(rnn_backward, (*detached, True, [], *grads_in))


def test_recompute_keyword_repr_state_dict_and_errors():
    lstm = gpukb_torch.LSTM(3, 4, recompute=True)
    assert lstm.recompute is True and "recompute=True" in repr(lstm)
    gru = gpukb_torch.GRU(3, 4)
    assert gru.recompute is False and "recompute" not in repr(gru)
    reference = torch.nn.LSTM(3, 4)
    assert list(lstm.state_dict()) == list(reference.state_dict())
    lstm.load_state_dict(reference.state_dict())
    reference.load_state_dict(lstm.state_dict())
    with pytest.raises(TypeError, match="LSTM: recompute must be a bool, got int"):
        gpukb_torch.LSTM(3, 4, recompute=1)
    with pytest.raises(TypeError, match="GRU: recompute must be a bool, got str"):
        gru.recompute = "yes"
    assert gru.recompute is False
    with pytest.raises(ValueError, match="recompute=True takes no residuals"):
        args = _op_args("gru", False, False, requires_grad=False)[:-1]
        rnn_backward(*args, True, [torch.zeros(1)], *[torch.zeros(1)] * 3)


def test_results_do_not_alias_the_arguments():
    """An all-masked sequence keeps its initial state; h_n must still be a new tensor."""
    module = gpukb_torch.GRU(2, 3, batch_first=True, dtype=F64)
    h0 = torch.randn(1, 2, 3, dtype=F64)
    output, h_n = module(torch.randn(2, 4, 2, dtype=F64), h0, mask=torch.zeros(2, 4, dtype=bool))
    assert torch.equal(h_n, h0) and h_n.data_ptr() != h0.data_ptr()
    assert torch.equal(output, torch.zeros_like(output))


# ---------------------------------------------------------------------------------------------
# Errors: clear, of the right type, before any work
# ---------------------------------------------------------------------------------------------

def test_errors():
    with pytest.raises(NotImplementedError, match="proj_size"):
        gpukb_torch.LSTM(3, 4, proj_size=2)
    with pytest.raises(ValueError, match="hidden_size must be greater than zero"):
        gpukb_torch.GRU(3, 0)
    with pytest.raises(TypeError, match="input_size must be an int"):
        gpukb_torch.GRU(3.0, 4)
    with pytest.raises(ValueError, match="dropout"):
        gpukb_torch.GRU(3, 4, dropout=1.5)
    lstm = gpukb_torch.LSTM(3, 4, batch_first=True)
    x = torch.randn(2, 5, 3)
    with pytest.raises(ValueError, match="Expected input to be 2D or 3D, got 4D"):
        lstm(x[None])
    with pytest.raises(ValueError, match="input.size\\(-1\\) must equal input_size=3"):
        lstm(torch.randn(2, 5, 4))
    with pytest.raises(ValueError, match="does not match the weights' dtype"):
        lstm(x.double())
    with pytest.raises(TypeError, match="float32 or float64"):
        lstm(x.half())
    with pytest.raises(ValueError, match=r"mask must have shape \(2, 5\)"):
        lstm(x, mask=torch.ones(5, 2, dtype=bool))
    with pytest.raises(TypeError, match="mask must have dtype torch.bool"):
        lstm(x, mask=torch.ones(2, 5))
    with pytest.raises(ValueError, match="either a PackedSequence or a mask"):
        lstm(pack_padded_sequence(x, [5, 3], batch_first=True), mask=torch.ones(2, 5, dtype=bool))
    with pytest.raises(TypeError, match=r"hx must be a tuple \(h_0, c_0\)"):
        lstm(x, torch.zeros(1, 2, 4))
    with pytest.raises(ValueError, match=r"c_0 must have shape \(1, 2, 4\)"):
        lstm(x, (torch.zeros(1, 2, 4), torch.zeros(2, 2, 4)))


def test_gpu_results_that_are_not_c_contiguous_are_copied_before_dlpack(monkeypatch):
    """torch.from_dlpack aborted the process on a CuPy view with a negative stride (a reversed
    direction's outputs, seen on an H200): as_tensor copies such arrays first. A stand-in CuPy
    module and array (NumPy memory underneath) check which arrays are copied."""
    import types

    from gpukb_torch import _arrays

    copied = []

    class FakeCupyArray:
        __module__ = "cupy"

        def __init__(self, array):
            self.array = array
            self.flags = array.flags

        def __dlpack__(self, **kwargs):
            return np.ascontiguousarray(self.array).__dlpack__()

        def __dlpack_device__(self):
            return self.array.__dlpack_device__()

    def ascontiguousarray(a):
        copied.append(a)
        return FakeCupyArray(np.ascontiguousarray(a.array))

    monkeypatch.setitem(sys.modules, "cupy", types.SimpleNamespace(
        ascontiguousarray=ascontiguousarray))
    base = np.arange(24.0).reshape(2, 3, 4)
    for view, copies in ((base, 0), (base[::-1], 1), (base[:, ::-1], 1), (base[:, :, :2], 1)):
        copied.clear()
        tensor = _arrays.as_tensor(FakeCupyArray(view))
        assert len(copied) == copies
        assert torch.equal(tensor, torch.from_numpy(np.ascontiguousarray(view)))


def test_backward_leaves_unused_outputs_and_residuals_without_gradients():
    """Autograd hands the op's backward None for outputs that took no part in the loss (it no
    longer makes zero tensors for them, the residuals' included): a loss on h_n alone gives the
    gradients of torch's LSTM."""
    torch.manual_seed(3)
    ours, theirs = gpukb_torch.LSTM(3, 5, batch_first=True), torch.nn.LSTM(3, 5, batch_first=True)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(2, 4, 3)
    for module in (ours, theirs):
        xi = x.clone().requires_grad_(True)
        _, (h_n, _) = module(xi)
        h_n.sum().backward()
        module.x_grad = xi.grad
    torch.testing.assert_close(ours.x_grad, theirs.x_grad, rtol=1e-5, atol=1e-6)
    for (name, p), q in zip(ours.named_parameters(), theirs.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-6, msg=name)


def test_torchs_openmp_threads_are_let_go_before_the_kernels(monkeypatch):
    """On the CPU the drop-in lets torch's OpenMP workers go before gpukb's kernels run, in the
    forward and in the backward (gpukb_torch._openmp), unless release_openmp_threads is False;
    the results are the same bits either way."""
    from gpukb_torch import _openmp

    torch.randn(1 << 20).sum()   # a parallel op: torch's OpenMP runtime is loaded and running
    if sys.platform.startswith("linux"):
        assert any("omp" in p for p in _openmp._loaded_runtimes())
        assert _openmp.runtimes() >= 1   # torch's runtime offers omp_pause_resource_all
    _openmp.release()                    # callable any time; torch works on after it
    assert torch.randn(1 << 20).sum().isfinite()
    calls = []
    release = _openmp.release
    monkeypatch.setattr(_openmp, "release", lambda: calls.append(1) or release())
    torch.manual_seed(4)
    lstm = gpukb_torch.LSTM(3, 5, batch_first=True)
    x = torch.randn(2, 6, 3)
    results = {}
    for enabled in (True, False):
        monkeypatch.setattr(gpukb_torch, "release_openmp_threads", enabled)
        calls.clear()
        xi = x.clone().requires_grad_(True)
        lstm.zero_grad(set_to_none=True)
        y, _ = lstm(xi)
        y.sum().backward()
        assert len(calls) == (2 if enabled else 0)   # forward, backward
        results[enabled] = (y.detach(), xi.grad, lstm.weight_hh_l0.grad)
    for a, b in zip(results[True], results[False]):
        assert torch.equal(a, b)


@pytest.mark.parametrize("mode", ["lstm", "gru"])
def test_checkpointing_and_inference_mode_give_torchs_results(mode):
    """torch.utils.checkpoint (non-reentrant: it replaces the saved tensors through saved-tensor
    hooks and runs the forward again in the backward) and torch.inference_mode, on the eager
    route, against torch's module."""
    from torch.utils.checkpoint import checkpoint

    ours, theirs = _pair(mode, 3, 4, batch_first=True)
    x = torch.randn(2, 5, 3, dtype=F64)
    with torch.inference_mode():
        torch.testing.assert_close(ours(x)[0], theirs(x)[0], rtol=1e-10, atol=1e-12)
    grads = []
    for module, wrap in ((ours, True), (theirs, False)):
        xi = x.clone().requires_grad_(True)
        module.zero_grad(set_to_none=True)
        run = lambda a: module(a)[0]  # noqa: E731
        output = checkpoint(run, xi, use_reentrant=False) if wrap else run(xi)
        output.sum().backward()
        grads.append([xi.grad, *(p.grad for _, p in sorted(module.named_parameters()))])
    _assert_close_lists(grads[0], grads[1], rtol=1e-9, atol=1e-11)


# ---------------------------------------------------------------------------------------------
# freeze(): gpukb's cells kept between inference calls
# ---------------------------------------------------------------------------------------------

def _conversions(monkeypatch):
    """The weight conversions to Keras's layout made from here on (_ops.keras_weights calls)."""
    from gpukb_torch import _ops

    calls = []
    convert = _ops.keras_weights
    monkeypatch.setattr(_ops, "keras_weights", lambda *a: calls.append(1) or convert(*a))
    return calls


@pytest.mark.parametrize("mode", ["lstm", "gru"])
def test_freeze_gives_the_same_bits_and_converts_no_weights_per_call(mode, monkeypatch):
    """float32, two bidirectional layers, hx, a mask with holes, and a packed sequence, under
    no_grad and inference_mode: a frozen module's results are the unfrozen module's bits, and
    its weights are converted once (at its first call), not at every call."""
    ours, _ = _pair(mode, 3, 4, num_layers=2, bidirectional=True, batch_first=True,
                    dtype=torch.float32)
    gen = torch.Generator().manual_seed(9)
    x = torch.randn(3, 6, 3, generator=gen)
    mask = torch.rand((3, 6), generator=gen) < 0.7
    hx = _hx(mode, (4, 3, 4), dtype=torch.float32, requires_grad=False)
    packed = pack_padded_sequence(x, torch.tensor([6, 2, 4]), batch_first=True,
                                  enforce_sorted=False)
    calls = [lambda: ours(x, hx, mask=mask), lambda: ours(packed)]
    with torch.no_grad():
        expected = [_flat(call()) for call in calls]
    assert ours.freeze() is ours and ours.frozen
    conversions = _conversions(monkeypatch)
    for context in (torch.no_grad, torch.inference_mode):
        with context():
            for call, want in zip(calls, expected):
                for a, b in zip(_flat(call()), want):
                    assert torch.equal(a, b)
    assert len(conversions) == 4   # two layers, two directions, once: not in each of 4 calls
    assert ours.unfreeze() is ours and not ours.frozen
    with torch.no_grad():
        ours(x)
    assert len(conversions) == 8   # unfrozen: converted at every call again


@pytest.mark.parametrize("change", ["optimizer step", "load_state_dict", "copy_", "to float64"])
def test_a_frozen_module_follows_changes_of_its_parameters(change):
    """A parameter changed in place or replaced after freeze(): the next inference call makes
    the cells again and gives an unfrozen module's results for the new weights."""
    ours, theirs = _pair("lstm", 3, 4, batch_first=True, dtype=torch.float32)
    ours.freeze()
    x = torch.randn(2, 5, 3)
    with torch.no_grad():
        before = ours(x)[0]
    if change == "optimizer step":
        ours(x)[0].sum().backward()   # a differentiable call: the regular path
        torch.optim.SGD(ours.parameters(), lr=0.5).step()
    elif change == "load_state_dict":
        ours.load_state_dict({k: v * 1.5 for k, v in ours.state_dict().items()})
    elif change == "copy_":
        with torch.no_grad():
            ours.weight_hh_l0.copy_(ours.weight_hh_l0.flip(0))
    else:
        ours.to(torch.float64)
        x = x.double()
    assert ours.frozen
    reference = PAIRS["lstm"][0](3, 4, batch_first=True, dtype=ours.weight_ih_l0.dtype)
    reference.load_state_dict(ours.state_dict())
    with torch.no_grad():
        after, expected = ours(x)[0], reference(x)[0]
    assert torch.equal(after, expected)
    assert not torch.equal(after.float(), before)


@pytest.mark.parametrize("mode", ["lstm", "gru"])
def test_a_frozen_modules_differentiable_calls_run_as_before(mode, monkeypatch):
    """With gradients on, a frozen module converts its weights as an unfrozen one does, and
    gives the same outputs and gradients (torch's, to 1e-9)."""
    ours, theirs = _pair(mode, 3, 4, batch_first=True)
    ours.freeze()
    conversions = _conversions(monkeypatch)
    x = torch.randn(2, 5, 3, dtype=F64, requires_grad=True)
    _assert_matches(ours, theirs, (x,), [x])
    assert len(conversions) >= 1


def test_a_frozen_module_pickles_and_copies():
    """torch.save of the whole module and copy.deepcopy: the cells (which hold compiled
    kernels' plans) are left out and made again; the copy is frozen and gives the same bits."""
    import copy
    import io

    module = gpukb_torch.LSTM(3, 4).freeze()
    x = torch.randn(5, 2, 3)
    with torch.no_grad():
        expected = module(x)[0]
    buffer = io.BytesIO()
    torch.save(module, buffer)
    buffer.seek(0)
    for twin in (torch.load(buffer, weights_only=False), copy.deepcopy(module)):
        assert twin.frozen
        with torch.no_grad():
            assert torch.equal(twin(x)[0], expected)


def test_an_unknown_mode_is_refused_on_both_routes():
    from gpukb_torch import _direction

    args = list(_op_args("lstm", reverse=False, time_major=False, requires_grad=False))
    args[0] = "rnn"
    with pytest.raises(ValueError, match="mode must be 'lstm' or 'gru', got 'rnn'"):
        rnn_forward(*args)
    with pytest.raises(ValueError, match="mode must be 'lstm' or 'gru', got 'rnn'"):
        _direction.run(*args[:11], differentiable=False, recompute=False)


def test_the_eager_backward_uses_the_forwards_pullback_unless_hooks_or_reverse(monkeypatch):
    """The forward direction's backward calls the pullback rnn_vjp returned (no rebuild) when
    no saved-tensor hooks are at work; under hooks (they must see every saved tensor) and for
    the reverse direction (whose pullback holds a copy of its outputs) it rebuilds it from the
    saved tensors. The gradients are the same bits every way."""
    import gpukb

    rebuilds = []
    rebuild = gpukb.rnn_pullback
    monkeypatch.setattr(gpukb, "rnn_pullback",
                        lambda *a, **k: rebuilds.append(1) or rebuild(*a, **k))
    grads = {}
    for bidirectional in (False, True):
        module, _ = _pair("lstm", 3, 4, batch_first=True, bidirectional=bidirectional)
        for hooks in (False, True):
            rebuilds.clear()
            x = torch.randn(2, 5, 3, dtype=F64, generator=torch.Generator().manual_seed(2))
            x.requires_grad_(True)
            if hooks:
                with torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t):
                    output, _ = module(x)
            else:
                output, _ = module(x)
            (grads[bidirectional, hooks],) = torch.autograd.grad(output.sum(), x)
            # rebuilt: the reverse direction always, the forward one under hooks
            assert len(rebuilds) == int(bidirectional) + int(hooks)
    for bidirectional in (False, True):
        assert torch.equal(grads[bidirectional, False], grads[bidirectional, True])
