#!/usr/bin/env bash
# The wheels run_checks.sh installs on the device machine, which has no network: gpukb's own three
# (built from this checkout, so rerun this after every change) and those its image lacks.
# The image (.library/device/KINDS.md) has numpy, numba, numba-cuda, cupy-cuda13x, torch, scipy,
# h5py, pytest, pytest-xdist, hypothesis, cloudpickle, toolz, fsspec, msgpack, psutil, pyyaml,
# click, pandas and nvidia-ml-py; not optree, dask, distributed, dask-cuda, partd, locket, tblib,
# tornado or zict. dask and distributed are pinned to what dask-cuda's rapids-dask-dependency pins.
# numpy 2.4: the image's numpy 2.5.2 has no np.row_stack, which numba-cuda 0.30.4 (the newest) uses
# when it compiles its first kernel (seen on the H200 image, 2026-12-04).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$repo"
grep -qx "/.whl/" .git/info/exclude 2>/dev/null || echo /.whl/ >> .git/info/exclude
mkdir -p .whl
rm -f .whl/gpukb-*.whl .whl/gpukb_*.whl
python3 -m pip wheel -q --no-deps -w .whl . ./plugins/gpukb-torch ./plugins/gpukb-dask
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
           --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${platforms[@]}" -d .whl optree==0.20.0 dask==2026.7.1 distributed==2026.7.1 dask-cuda==26.10.0 \
  rapids-dask-dependency==26.10.0 numpy==2.4.6 partd==1.4.2 locket==1.0.0 tblib==3.2.2 tornado==6.6.1 zict==3.0.0
ls .whl
