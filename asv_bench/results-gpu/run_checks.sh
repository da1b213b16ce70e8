#!/usr/bin/env bash
# Every GPU check of the cuda backend in ONE call on a lent GPU machine (the device tool), sized to
# end within about 8 minutes (each step has its own timeout) so that a 15-minute budget leaves room
# for a start and a short rerun.
#
#   here, first (the device image has no network and no setuptools build of ours):
#     bash asv_bench/results-gpu/make_wheels.sh
#   device run, from the repository root, carry [".whl"], timeout_s 590:
#     bash asv_bench/results-gpu/run_checks.sh
#
# .whl/ holds gpukb's own wheels (gpukb, gpukb-torch, gpukb-dask) and the ones the image lacks
# (optree; dask, distributed, dask-cuda and their small pure-Python needs); make_wheels.sh says
# which.
#
# Phase 1, correctness, runs its four test groups side by side (compiling dominates; the GPU is
# time-sliced between their processes); phase 2, timing, runs alone. Writes to $OUT (or ./gpu-out)
# at most 8 files, the device tool's limit: env.txt, gpu.txt (the gpu-marked tests), vjp.txt
# (rnn_vjp's fused CUDA backward), torch.txt (the PyTorch drop-in on CUDA tensors), dask.txt
# (gpukb-dask on CuPy chunks), bench.txt + bench.json (the forward against cuDNN, and the per-step
# cost at T=1000), train.txt (forward + backward against cuDNN; the generic loop on CuPy arrays).
# Copy what comes back into a dated
# folder here, with the device and versions, and update README.md beside this script.
# shellcheck source=asv_bench/results-gpu/_setup.sh
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
start=$SECONDS
stamp() { echo "[$((SECONDS - start)) s] $*"; }

{ date -u; nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv;
  $py --version; nproc
  $py -m pip list 2>/dev/null | grep -i -E "^(numpy|numba|numba-cuda|cupy|torch|hypothesis|optree|cuda-|pytest|scipy|h5py)" ; } \
  > "$out/env.txt" 2>&1

install_wheels "$out/env.txt" || exit 1
# Run from elsewhere: the checkout's gpukb/ (no kernels/ inside) must not shadow the installed one.
cd /tmp || exit 1
$py - >> "$out/env.txt" 2>&1 <<'EOF'
import sys, gpukb
r = gpukb.get_backend("cuda").is_available()
print("gpukb", gpukb.__version__, "from", gpukb.__file__)
print("cuda backend:", bool(r), r.reason)
import numba
from importlib.metadata import version
print("numba", numba.__version__, "numba-cuda", version("numba-cuda"))
sys.exit(0 if r else 1)
EOF
ok=$?
tail -4 "$out/env.txt"
[ $ok -eq 0 ] || { $py -c "import numba.cuda; numba.cuda.detect()" >> "$out/env.txt" 2>&1; exit 1; }
stamp "installed"

# -v: each test's outcome is written as it ends, so a run cut short by its timeout still says which
# passed.
pytest_opts=(-v -p no:cacheprovider -o addopts="" -rfEs --durations=8)

# Phase 1: correctness, four groups at once.
# 1a. The gpu-marked tests: grid-sync persistent kernel as a real cooperative launch, streams,
#     DLPack, TF32, the conformance suite on CuPy arrays.
timeout 250 $py -m pytest "${pytest_opts[@]}" -n 6 -m gpu \
  "$repo/tests/test_cuda_gpu.py" "$repo/tests/test_cells.py" > "$out/gpu.txt" 2>&1 &
# 1b. rnn_vjp's fused CUDA backward (per step and persistent, one block and a multi-block grid-sync
#     tiling) on CuPy arrays against the cpu backend's fused vjp: the simulator's test file, run on
#     the GPU (--noconftest: its folder's conftest collects it only under the simulator).
timeout 250 $py -m pytest "${pytest_opts[@]}" -n 5 --noconftest \
  "$repo/tests/cuda_sim/test_sim_vjp.py" > "$out/vjp.txt" 2>&1 &
# 1c. The PyTorch drop-in on CUDA tensors (against cuDNN and the CPU), and the torch backend's CUDA
#     tests.
timeout 250 $py -m pytest "${pytest_opts[@]}" -n 3 \
  "$repo/plugins/gpukb-torch/tests/test_dropin_cuda.py" "$repo/plugins/gpukb-torch/tests/test_torch_backend.py" \
  > "$out/torch.txt" 2>&1 &
# 1d. gpukb-dask's CuPy test on Dask's threads (skipped, with the reason, without dask).
timeout 250 $py -m pytest "${pytest_opts[@]}" -k cupy \
  "$repo/plugins/gpukb-dask/tests/test_dask_backend.py" > "$out/dask.txt" 2>&1 &
wait
stamp "phase 1 done"
for f in gpu vjp torch dask; do echo "== $f: $(tail -1 "$out/$f.txt")"; grep -E "^(FAILED|ERROR)" "$out/$f.txt" | head -5; done

# Phase 2: timing, alone on the machine.
# 2a. Against cuDNN (PyTorch nn.LSTM / nn.GRU), float32, T=100, D=H, masks none/right/random.
timeout 150 $py -m gpukb.bench.cuda --cells lstm,gru \
  --shapes 1x256,8x256,16x256,32x256,32x512,64x1024,256x1024 --steps 100 --masks none,right,random \
  --json "$out/bench.json" > "$out/bench.txt" 2>&1
stamp "bench done"
# 2b. Per-step cost: T=1000 at tiny sizes, where launch overhead is all there is.
echo "== overhead: T=1000 ==" >> "$out/bench.txt"
timeout 40 $py -m gpukb.bench.cuda --cells lstm --shapes 1x64,8x128 --steps 1000 \
  --masks none --repeat 10 >> "$out/bench.txt" 2>&1
# 2c. Forward + backward against cuDNN through the PyTorch drop-in.
timeout 70 $py "$repo/asv_bench/results-gpu/train_bench.py" > "$out/train.txt" 2>&1
stamp "train bench done"
# 2c'. The generic loop's own cost on CuPy arrays (issue 12 item 5: at most 1.2x the hand-written
#      loop on every backend; measured on the cpu and torch backends without a GPU).
echo "== generic loop, cuda backend ==" >> "$out/train.txt"
timeout 60 $py -m gpukb.bench.generic --backend cuda --rounds 3 >> "$out/train.txt" 2>&1
# 2d. gpukb-dask: CuPy chunks on a dask_cuda.LocalCUDACluster against one process.
echo "== gpu_check.py ==" >> "$out/dask.txt"
timeout 90 $py "$repo/plugins/gpukb-dask/gpu_check.py" >> "$out/dask.txt" 2>&1
stamp "all done"

echo "== vs cuDNN (T=100, then T=1000) =="; grep -E "^(lstm|gru) " "$out/bench.txt"
echo "== train =="; cat "$out/train.txt"
echo "== dask =="; tail -8 "$out/dask.txt"
