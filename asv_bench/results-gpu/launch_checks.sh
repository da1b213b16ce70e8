#!/usr/bin/env bash
# The GPU checks of the per-step path's RepeatedLaunch (arguments converted once instead of by
# numba-cuda's dispatcher at every step) and the data for the persistent kernel's size rule, in
# ONE device call (about 3 minutes):
#
#   here: bash asv_bench/results-gpu/make_wheels.sh
#   device run, from the repository root, carry [".whl"], timeout_s 400:
#     bash asv_bench/results-gpu/launch_checks.sh
#
# Writes to $OUT (or ./gpu-out): tests.txt (the per-step and backward tests on the GPU), dask.txt
# (gpukb-dask's CuPy test and gpu_check.py: a mask in CuPy chunks), launch.txt (dispatcher against
# RepeatedLaunch, forward and forward + backward), sweep.jsonl (every tiling of the persistent
# kernel at small batches, us per step).
# shellcheck source=asv_bench/results-gpu/_setup.sh
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
install_wheels /tmp/gpukb-install.log || exit 1
cd /tmp || exit 1
start=$SECONDS
stamp() { echo "[$((SECONDS - start)) s] $*"; }
pytest_opts=(-v -p no:cacheprovider -o addopts="" -rfEs)
script="$repo/asv_bench/results-gpu/profile_gpu.py"
timeout 200 $py -m pytest "${pytest_opts[@]}" -n 6 -m gpu "$repo/tests/test_cuda_gpu.py" \
  -k "per_step_launches or fused_cells_match or current_stream or tf32" > "$out/tests.txt" 2>&1 &
timeout 200 $py -m pytest "${pytest_opts[@]}" -n 4 --noconftest \
  "$repo/tests/cuda_sim/test_sim_vjp.py" > "$out/vjp.txt" 2>&1 &
wait
stamp "tests done"
for f in tests vjp; do echo "== $f: $(tail -1 "$out/$f.txt")"; grep -E "^(FAILED|ERROR)" "$out/$f.txt" | head -5; done
timeout 60 $py -m pytest "${pytest_opts[@]}" -k cupy "$repo/plugins/gpukb-dask/tests/test_dask_backend.py" > "$out/dask.txt" 2>&1
echo "== gpu_check.py ==" >> "$out/dask.txt"
timeout 90 $py "$repo/plugins/gpukb-dask/gpu_check.py" >> "$out/dask.txt" 2>&1
stamp "dask done"
timeout 90 $py "$script" launch > "$out/launch.txt" 2>&1
stamp "launch done"
timeout 120 $py "$script" sweep 2>/dev/null > "$out/sweep.jsonl"
stamp "sweep done"
grep -v Warn "$out/launch.txt" | grep -v "warn("; grep -v Warn "$out/dask.txt" | grep -v "warn(" | tail -12
