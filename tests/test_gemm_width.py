"""The CPU GEMM tiles use 512-bit vectors where Numba compiles for AVX-512 and 256-bit ones
otherwise (kernels/cpu/_gemm.py, VECTOR_BYTES). The width changes how many columns one
instruction covers, never the arithmetic: either width gives the same bits."""

import json
import os
import subprocess
import sys

import numpy as np

from gpukb.kernels.cpu import _gemm

# Runs fused_rows (every tile shape: 6, 4, 2 and 1 rows, wide one-row panels) in a process whose
# Numba target is given by NUMBA_CPU_NAME / NUMBA_CPU_FEATURES, and prints the results' bits.
_SCRIPT = r"""
import json, sys
import numpy as np
from gpukb.kernels.cpu import _gemm as g
out = {"vector_bytes": g.VECTOR_BYTES}
rng = np.random.default_rng(0)
for dt in (np.float32, np.float64):
    for M in (1, 2, 3, 4, 6, 13):
        K, N = 37, 150
        U = rng.standard_normal((K, N)).astype(dt)
        A = rng.standard_normal((M, K)).astype(dt)
        b = rng.standard_normal(N).astype(dt)
        P = g.pack(U, 0, N, g.panel_width(dt, g.panel_vectors(M)))
        Np = P.shape[0] * P.shape[2]
        bias = np.zeros(Np, dt); bias[:N] = b
        Z = np.zeros((M, Np), dt)
        g.fused_rows(Z, g.ad(Z), Np, g.ad(bias), g.I0, g.ad(A), K, g.ad(P), K, P.shape[0],
                     np.int64(g.panel_vectors(M)), g.I0, np.int64(M))
        out[f"{np.dtype(dt).name}-{M}"] = Z[:, :N].tobytes().hex()
print(json.dumps(out))
"""


def _run(tmp_path, name, **env_vars):
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / name), **env_vars}
    result = subprocess.run([sys.executable, "-c", _SCRIPT], env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


def test_vector_width_follows_numbas_target_features(monkeypatch):
    from numba.core import config

    monkeypatch.setattr(config, "CPU_FEATURES", "+avx2,+fma,+avx512f,+avx512bw")
    assert _gemm._vector_bytes() == 64
    monkeypatch.setattr(config, "CPU_FEATURES", "+avx2,+fma,-avx512f")
    assert _gemm._vector_bytes() == 32
    # a wide panel keeps 64 float32 columns, so unit splits find the same whole panels
    assert _gemm.panel_width(np.float32, _gemm.WIDE_VECTORS) == 64


def test_256_and_512_bit_tiles_give_the_same_bits_and_match_a_float64_product(tmp_path):
    avx2 = _run(tmp_path, "avx2", NUMBA_CPU_NAME="haswell", NUMBA_CPU_FEATURES="+avx,+avx2,+fma")
    assert avx2.pop("vector_bytes") == 32
    rng = np.random.default_rng(0)
    for dt in (np.float32, np.float64):   # the same draws as the script, in the same order
        for M in (1, 2, 3, 4, 6, 13):
            U = rng.standard_normal((37, 150)).astype(dt)
            A = rng.standard_normal((M, 37)).astype(dt)
            b = rng.standard_normal(150).astype(dt)
            got = np.frombuffer(bytes.fromhex(avx2[f"{np.dtype(dt).name}-{M}"]), dt)
            want = b.astype(np.float64) + A.astype(np.float64) @ U.astype(np.float64)
            np.testing.assert_allclose(got.reshape(M, 150), want, rtol=1e-5 if dt == np.float32
                                       else 1e-13, atol=1e-5 if dt == np.float32 else 1e-13)
    if _gemm.VECTOR_BYTES == 64:   # this machine has AVX-512: its tiles give the same bits
        native = _run(tmp_path, "native")
        assert native.pop("vector_bytes") == 64
        assert native == avx2
