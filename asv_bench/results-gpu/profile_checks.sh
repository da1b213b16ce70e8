#!/usr/bin/env bash
# The profile of the cuda backend, in ONE device call (20-60 s on the H200), after run_checks.sh's
# figures (README.md beside this file): first run 2026-12-04 (second session), which found the
# grid barrier at ~1 us and the per-step path host-bound on numba-cuda's dispatcher (fixed);
# `call` (added after it) profiles whole persistent-path calls, whose ~1.4 ms beyond the kernel
# is the next question.
#
#   here: bash asv_bench/results-gpu/make_wheels.sh
#   device run, from the repository root, carry [".whl"], timeout_s 300:
#     bash asv_bench/results-gpu/profile_checks.sh
#
# Writes to $OUT (or ./gpu-out): barriers.txt (us per grid barrier: numba-cuda's grid sync
# against an atomic counter, 1-132 blocks), tilings.txt (us per step of the persistent kernel, tiling by
# tiling: one block against many, the grid sync alone, k-splits), host.txt (cProfile of the
# per-step path, then of whole persistent-path calls: `call`), ncu.txt (Nsight Compute on one
# persistent launch at (8, 128), T=1000).
# shellcheck source=asv_bench/results-gpu/_setup.sh
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
install_wheels /tmp/gpukb-install.log || exit 1
cd /tmp || exit 1
script="$repo/asv_bench/results-gpu/profile_gpu.py"
timeout 60 $py "$script" barriers > "$out/barriers.txt" 2>&1
timeout 90 $py "$script" tilings > "$out/tilings.txt" 2>&1
timeout 60 $py "$script" host > "$out/host.txt" 2>&1
timeout 60 $py "$script" call >> "$out/host.txt" 2>&1
timeout 120 ncu --clock-control none --kernel-name regex:persistent --launch-skip 1 --launch-count 1 \
  --section SpeedOfLight --section LaunchStats --section Occupancy --section WarpStateStats \
  --section SchedulerStats --section MemoryWorkloadAnalysis --section SourceCounters \
  $py "$script" one > "$out/ncu.txt" 2>&1
cat "$out/barriers.txt" "$out/tilings.txt"; head -40 "$out/host.txt"; grep -v "^==PROF==" "$out/ncu.txt" | head -120
