"""gpukb_torch.LSTM / GRU on CUDA tensors (gpukb's cuda backend, through CuPy): against cuDNN's
torch.nn.LSTM / GRU with the same weights, and against the same module on the CPU (whose results
test_dropin.py checks against torch and a plain loop) for masks cuDNN cannot express. Skipped,
with the reason, where torch sees no GPU or gpukb's cuda backend is unusable; run by
asv_bench/results-gpu/run_checks.sh on a lent GPU."""

import copy

import pytest

torch = pytest.importorskip("torch", reason="gpukb-torch needs PyTorch")
gpukb_torch = pytest.importorskip("gpukb_torch", reason="gpukb-torch is not installed")

import gpukb  # noqa: E402
from test_dropin import _assert_matches, _flat, _grads  # noqa: E402  (the CPU tests' helpers)
from torch.nn.utils.rnn import pack_padded_sequence  # noqa: E402

if not torch.cuda.is_available():
    pytest.skip("torch sees no CUDA device", allow_module_level=True)
_cuda = {r.name: r for r in gpukb._dispatch.backend_records()}.get("cuda")
if _cuda is None or not _cuda.availability or _cuda.backend.simulated:
    pytest.skip("gpukb's cuda backend is not installed, unusable or simulated: "
                f"{_cuda and _cuda.availability.reason}", allow_module_level=True)

F64 = torch.float64
PAIRS = {"lstm": (gpukb_torch.LSTM, torch.nn.LSTM), "gru": (gpukb_torch.GRU, torch.nn.GRU)}
CUDA = torch.device("cuda")


@pytest.fixture(autouse=True)
def _full_fp32():
    """cuDNN may use TF32 by default; the float32 comparisons are of full FP32 on both sides."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _pair(mode, *args, dtype=F64, **kwargs):
    """(gpukb module, torch module) on the GPU with the same weights."""
    ours_cls, torch_cls = PAIRS[mode]
    torch.manual_seed(0)
    ours = ours_cls(*args, dtype=dtype, **kwargs).to(CUDA)
    theirs = torch_cls(*args, dtype=dtype, **kwargs).to(CUDA)
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


def _hx(mode, shape, dtype=F64, device=CUDA):
    make = lambda: torch.randn(shape, dtype=dtype, device=device, requires_grad=True)  # noqa: E731
    return (make(), make()) if mode == "lstm" else make()


def _assert_close_lists(ours, theirs, **tol):
    assert len(ours) == len(theirs)
    for i, (a, b) in enumerate(zip(ours, theirs)):
        assert a.device.type == "cuda", f"item {i} left the GPU: {a.device}"
        torch.testing.assert_close(a, b.to(a.device), msg=lambda m: f"item {i}: {m}", **tol)


CONFIGS = [
    dict(kwargs={}, hx=False),
    dict(kwargs={"num_layers": 2, "bidirectional": True}, hx=True),
    dict(kwargs={"batch_first": True, "bias": False}, hx=True),
]


@pytest.mark.parametrize("mode", ["lstm", "gru"])
@pytest.mark.parametrize("config", CONFIGS, ids=["plain", "2-layers-bidirectional",
                                                 "batch-first-no-bias"])
@pytest.mark.parametrize("B, H", [(3, 4), (64, 96)], ids=["small", "B64-H96"])
def test_float64_matches_cudnn(mode, config, B, H):
    kwargs = config["kwargs"]
    ours, theirs = _pair(mode, 5, H, **kwargs)
    T = 9
    x = torch.randn((B, T, 5) if kwargs.get("batch_first") else (T, B, 5), dtype=F64,
                    device=CUDA, requires_grad=True)
    layers = kwargs.get("num_layers", 1) * (2 if kwargs.get("bidirectional") else 1)
    hx, leaves = None, [x]
    if config["hx"]:
        hx = _hx(mode, (layers, B, H))
        leaves += list(hx) if mode == "lstm" else [hx]
    _assert_matches(ours, theirs, (x, hx), leaves, _assert_close_lists)


@pytest.mark.parametrize("mode", ["lstm", "gru"])
@pytest.mark.parametrize("B, H", [(4, 32), (128, 256)])
def test_float32_matches_cudnn(mode, B, H):
    ours, theirs = _pair(mode, 16, H, num_layers=2, dtype=torch.float32)
    x = torch.randn(20, B, 16, device=CUDA, requires_grad=True)
    result, expected = ours(x), theirs(x)
    assert result[0].dtype == torch.float32
    _assert_close_lists(_flat(result), _flat(expected), rtol=2e-5, atol=2e-6)
    # Weight gradients sum B*T float32 products in different orders: compared normwise.
    for i, (a, b) in enumerate(zip(_grads(ours, result, [x]), _grads(theirs, expected, [x]))):
        assert a.device.type == "cuda", f"gradient {i} left the GPU: {a.device}"
        error = float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))
        assert error < 1e-5, f"gradient {i}: normwise relative error {error:.2e}"


@pytest.mark.parametrize("mode", ["lstm", "gru"])
def test_packed_sequence_matches_cudnn(mode):
    ours, theirs = _pair(mode, 3, 4, num_layers=2, bidirectional=True)
    lengths = torch.tensor([3, 7, 1, 5, 7])  # stays on the CPU, as torch wants
    x = torch.randn(7, 5, 3, dtype=F64, device=CUDA, requires_grad=True)
    hx = _hx(mode, (4, 5, 4))
    leaves = [x, *(hx if mode == "lstm" else [hx])]
    pack = lambda: pack_padded_sequence(x, lengths, enforce_sorted=False)  # noqa: E731
    result, expected = ours(pack(), hx), theirs(pack(), hx)
    _assert_close_lists(_flat(result), _flat(expected), rtol=1e-10, atol=1e-12)
    _assert_close_lists(_grads(ours, result, leaves), _grads(theirs, expected, leaves),
                        rtol=1e-9, atol=1e-11)


def _any_mask(B, T, gen):
    mask = torch.rand((B, T), generator=gen) < 0.6
    mask[0] = False                                 # all masked
    mask[1] = torch.arange(T) >= 2                  # left padding
    mask[2, 0], mask[2, 1:] = False, True           # first step masked
    return mask


@pytest.mark.parametrize("mode", ["lstm", "gru"])
@pytest.mark.parametrize("recompute", [False, True])
@pytest.mark.parametrize("B, H", [(5, 3), (48, 128)])
def test_any_mask_on_the_gpu_equals_the_cpu(mode, recompute, B, H):
    """Masks cuDNN cannot express (holes, left padding, an all-masked row), both directions, two
    layers: the GPU's outputs, states and gradients equal the CPU module's."""
    torch.manual_seed(0)
    cpu_module = PAIRS[mode][0](6, H, num_layers=2, bidirectional=True, batch_first=True,
                                dtype=F64, recompute=recompute)
    gpu_module = copy.deepcopy(cpu_module).to(CUDA)
    gen = torch.Generator().manual_seed(2)
    T = 11
    mask = _any_mask(B, T, gen)
    x = torch.randn(B, T, 6, dtype=F64, generator=gen)
    h = [torch.randn(4, B, H, dtype=F64, generator=gen) for _ in range(2 if mode == "lstm" else 1)]
    results = []
    for module, device in ((cpu_module, "cpu"), (gpu_module, CUDA)):
        leaves = [t.to(device).requires_grad_() for t in (x, *h)]
        hx = tuple(leaves[1:]) if mode == "lstm" else leaves[1]
        result = module(leaves[0], hx, mask=mask.to(device))
        results.append((_flat(result), _grads(module, result, leaves)))
    (cpu_out, cpu_grads), (gpu_out, gpu_grads) = results
    _assert_close_lists(gpu_out, cpu_out, rtol=1e-10, atol=1e-12)
    _assert_close_lists(gpu_grads, cpu_grads, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("mode", ["lstm", "gru"])
def test_recompute_equals_kept_residuals_on_the_gpu(mode):
    """float32, a mask with holes: the backward that runs the forward again gives what the one
    from kept residuals gives (to float32 rounding: the GPU's sums need not be bitwise
    repeatable)."""
    module, _ = _pair(mode, 8, 64, num_layers=2, bidirectional=True, dtype=torch.float32,
                      batch_first=True)
    gen = torch.Generator().manual_seed(5)
    mask = (torch.rand((16, 12), generator=gen) < 0.7).to(CUDA)
    x = torch.randn((16, 12, 8), generator=gen).to(CUDA).requires_grad_()
    results = {}
    for recompute in (False, True):
        module.recompute = recompute
        result = module(x, mask=mask)
        results[recompute] = _flat(result) + list(_grads(module, result, [x]))
    _assert_close_lists(results[True], results[False], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", ["lstm", "gru"])
def test_runs_on_torchs_current_stream(mode):
    """Queued on a side stream with no synchronisation of its own: the results, read after that
    stream is waited for, equal the default stream's."""
    ours, _ = _pair(mode, 8, 32, dtype=torch.float32)
    x = torch.randn(50, 8, 8, device=CUDA, requires_grad=True)
    expected = _flat(ours(x))
    expected_grads = _grads(ours, ours(x), [x])
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        result = ours(x)
        got, got_grads = _flat(result), _grads(ours, result, [x])
    torch.cuda.current_stream().wait_stream(side)
    _assert_close_lists(got, expected, rtol=0, atol=0)
    _assert_close_lists(list(got_grads), list(expected_grads), rtol=1e-6, atol=1e-7)
