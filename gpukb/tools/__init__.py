"""Developer tools that drive the whole library (not imported by ``import gpukb``).

- ``ptx_check``: compile every CUDA kernel of the cuda backend for a real GPU, without one
  (``python -m gpukb.tools.ptx_check``).
"""
