"""Zero-copy views of torch tensors as the arrays gpukb's kernels run on, and back.

CPU tensors become NumPy views (``Tensor.numpy``), so gpukb's ``cpu`` backend runs its fused Numba
kernels on torch's memory; CUDA tensors become CuPy arrays through DLPack, for gpukb's ``cuda``
backend, and the call is queued on torch's current stream (CuPy's current stream is set to it), so
it is ordered with torch's own work on that stream without a synchronisation.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch


def as_array(tensor: torch.Tensor | None) -> Any:
    """The tensor's memory as a NumPy (CPU) or CuPy (CUDA) array; None stays None."""
    if tensor is None:
        return None
    tensor = tensor.detach()
    if tensor.device.type == "cpu":
        return tensor.numpy()
    if tensor.device.type == "cuda":
        import cupy

        return cupy.from_dlpack(tensor)
    raise TypeError(
        f"gpukb_torch: tensors on {tensor.device.type!r} are not supported; gpukb runs CPU "
        "tensors (NumPy) and CUDA tensors (CuPy)."
    )


def as_tensor(array: Any) -> torch.Tensor:
    """A NumPy or CuPy result as a torch tensor sharing its memory."""
    if type(array).__module__.split(".")[0] == "numpy":
        # from_numpy needs non-negative strides (a flipped view is copied first).
        if any(s < 0 for s in array.strides):
            array = array.copy()
        return torch.from_numpy(array)
    # torch.from_dlpack aborted the whole process (no exception) on CuPy views with a negative
    # stride, such as a reversed direction's outputs (torch 2.11, CuPy 14.2, an H200; see
    # asv_bench/results-gpu/dlpack_probe.py): any view that is not C-contiguous is copied first.
    if not array.flags.c_contiguous:
        import cupy

        array = cupy.ascontiguousarray(array)
    return torch.from_dlpack(array)


@contextlib.contextmanager
def on_device_of(tensor: torch.Tensor) -> Iterator[None]:
    """Run gpukb on the tensor's device: for CUDA, on its GPU and torch's current stream."""
    if tensor.device.type != "cuda":
        yield
        return
    import cupy

    stream = torch.cuda.current_stream(tensor.device)
    with cupy.cuda.Device(tensor.device.index), cupy.cuda.ExternalStream(
        stream.cuda_stream, tensor.device.index
    ):
        yield
