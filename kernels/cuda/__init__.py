"""Fused Numba CUDA kernels for the ``cuda`` backend (installed as ``gpukb.kernels.cuda``).

Modules (each imports ``numba.cuda``; this package itself imports nothing heavy):

- ``cells``: the fused path for the Keras cells (input projection GEMM, then the persistent
  kernel or per-step recurrent GEMM + fused step kernel);
- ``step``: the per-step fused kernels (gates + masking + state hold + output write);
- ``persistent``: the one-launch persistent kernel and its size rule (``plan``);
- ``generic``: the generic loop with one masking kernel per step for any step function;
- ``activations``: Keras activations as device functions;
- ``_runtime``: simulator detection, CuPy stream / device views, kernel cache, TF32 switch.

Under ``NUMBA_ENABLE_CUDASIM=1`` every kernel runs in Numba's CUDA simulator on NumPy arrays.
"""
