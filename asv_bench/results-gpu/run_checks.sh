#!/usr/bin/env bash
# Every GPU check of the cuda backend in ONE call on a lent GPU machine (the device tool), sized to
# end within about 8 minutes so that a 15-minute budget leaves room for one rerun.
#
#   device run, from the repository root, carry [".whl"], timeout_s 560:
#     bash asv_bench/results-gpu/run_checks.sh
#
# .whl/ holds the wheels the device image lacks (it has no network); today that is optree:
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl optree
#
# Writes to $OUT (or ./gpu-out): env.txt, pytest-gpu.txt + .xml, pytest-vjp.txt + .xml (rnn_vjp's
# fused backward), bench.txt + bench.json (the cuDNN comparison), overhead.txt (per-step cost at
# T=1000). Copy what comes back into a dated folder
# here, with the device and versions, and update README.md beside this script.
set -uo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
out=${OUT:-$repo/gpu-out}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
site=/tmp/gpukb-site
py=${PY:-python3}

{ date -u; nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv;
  $py -m pip list 2>/dev/null | grep -i -E "^(numpy|numba|numba-cuda|cupy|torch|hypothesis|optree|cuda-)" ; } \
  > "$out/env.txt" 2>&1

# Install gpukb (and carried wheels) into a private folder; nothing touches the image's packages.
if ls "$repo"/.whl/*.whl >/dev/null 2>&1; then
  $py -m pip install -q --no-index --no-deps --no-compile --target "$site" "$repo"/.whl/*.whl || exit 1
fi
$py -m pip install -q --no-index --no-deps --no-build-isolation --target "$site" "$repo" || exit 1
export PYTHONPATH=$site
# Run from elsewhere: the checkout's gpukb/ (no kernels/ inside) must not shadow the installed one.
cd /tmp || exit 1
$py -c "import gpukb, sys; r = gpukb.get_backend('cuda').is_available(); print('cuda backend:', bool(r), r.reason); sys.exit(0 if r else 1)" \
  | tee -a "$out/env.txt" || exit 1

# 1. Correctness on the GPU: the gpu-marked tests (grid-sync persistent kernel, streams, DLPack,
#    TF32, conformance on CuPy arrays).
timeout 240 $py -m pytest -q -p no:cacheprovider -m gpu -o addopts="" \
  "$repo/tests/test_cuda_gpu.py" "$repo/tests/test_cells.py" --junitxml "$out/pytest-gpu.xml" \
  2>&1 | tee "$out/pytest-gpu.txt" | tail -25

# 1b. rnn_vjp's fused CUDA backward (per step and persistent, one block and a multi-block
#     grid-sync tiling; so far verified only under the CUDA simulator) on CuPy arrays, against the
#     cpu backend's fused vjp: the simulator's test file, run on the GPU (--noconftest: its
#     folder's conftest collects it only under the simulator). Most of its time is compiling.
timeout 210 $py -m pytest -q -p no:cacheprovider --noconftest -o addopts="" \
  "$repo/tests/cuda_sim/test_sim_vjp.py" --junitxml "$out/pytest-vjp.xml" \
  2>&1 | tee "$out/pytest-vjp.txt" | tail -15

# 2. Against cuDNN (PyTorch nn.LSTM / nn.GRU), float32, T=100, D=H, masks none/right/random.
timeout 240 $py -m gpukb.bench.cuda --cells lstm,gru \
  --shapes 1x256,8x256,32x512,64x1024,256x1024 --steps 100 --masks none,right,random \
  --json "$out/bench.json" 2>&1 | tee "$out/bench.txt" > /dev/null

# 3. Per-step cost: T=1000 at tiny sizes, where launch overhead is all there is.
timeout 60 $py -m gpukb.bench.cuda --cells lstm --shapes 1x64,8x128 --steps 1000 \
  --masks none --repeat 10 2>&1 | tee "$out/overhead.txt" > /dev/null

echo "== overhead (T=1000) =="; grep -E "^lstm" "$out/overhead.txt"
echo "== vs cuDNN (T=100) =="; grep -E "^(lstm|gru) " "$out/bench.txt"

# 4. gpukb-dask (issue 15): CuPy chunks through the cuda backend on a dask_cuda.LocalCUDACluster,
#    against one process; and the plugin's CuPy test on Dask's threads. Needs dask, distributed and
#    dask-cuda with their pure-Python dependencies in .whl/ (the image has none of them, as far as
#    known), e.g. python3 -m pip download --no-deps -d .whl dask distributed dask-cuda cloudpickle
#    toolz partd locket fsspec msgpack psutil sortedcontainers tblib tornado zict pyyaml click
#    (add --only-binary/--platform as for optree above for msgpack, psutil and pyyaml). Without
#    dask-cuda, gpu_check.py uses a plain LocalCluster and says so; without dask it is skipped.
if $py -c "import dask.array, distributed" >/dev/null 2>&1; then
  $py -m pip install -q --no-index --no-deps --no-build-isolation --target "$site" "$repo/plugins/gpukb-dask" \
    && timeout 150 $py "$repo/plugins/gpukb-dask/gpu_check.py" 2>&1 | tee "$out/dask-gpu.txt" | tail -12
  timeout 90 $py -m pytest -q -p no:cacheprovider -o addopts="" \
    "$repo/plugins/gpukb-dask/tests/test_dask_backend.py" -k cupy 2>&1 | tee -a "$out/dask-gpu.txt" | tail -3
else
  echo "gpukb-dask GPU check skipped: dask/distributed not importable (carry their wheels in .whl/)" \
    | tee "$out/dask-gpu.txt"
fi
