"""Fused Numba CUDA kernels for the ``cuda`` backend (installed as ``gpukb.kernels.cuda``).

Arrays and flags in, arrays out: nothing here imports the rest of gpukb (the driver that reads an
``RnnCall`` and picks a kernel is ``gpukb/backends/_cuda_cells.py``). Modules (each imports
``numba.cuda``; this package itself imports nothing heavy):

- ``unit``: one unit of one sample at one step, with ``kernels/cells``' update and masking rule
  (what the two kernels below share);
- ``step``: the per-step kernel (gates + masking + state hold + output write), one launch per step;
- ``persistent``: the one-launch persistent kernel and its size rule (``plan``);
- ``masking``: the masking kernel of the generic loop, for any step function's leaves;
- ``backward``: the per-step backward kernels of the cells (``rnn_vjp``'s fused path);
- ``persistent_backward``: the backward's reverse loop in one launch (the forward's tiling);
- ``backward_unit``: one unit's reverse step, with ``kernels/cells``' derivatives (what the two
  backward kernels share);
- ``activations``: the activation table (``kernels/cells/activations``) registered for CUDA;
- ``_runtime``: simulator detection, CuPy stream / device views, kernel cache, TF32 switch.

The step and persistent kernels are each written once, with the cell kind (``kernels.cells``) as
a compile-time constant; they take the call's flags as one ``kernels.options.LoopOptions``.
Under ``NUMBA_ENABLE_CUDASIM=1`` every kernel runs in Numba's CUDA simulator on NumPy arrays.
"""
