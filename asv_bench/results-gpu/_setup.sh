# Sourced by run_checks.sh and profile_checks.sh: where things go, and install_wheels, which puts
# the carried wheels (make_wheels.sh) into a private folder: nothing touches the image's packages.
set -uo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
out=${OUT:-$repo/gpu-out}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
site=/tmp/gpukb-site
py=${PY:-python3}

install_wheels() {   # $1: the log that pip's output goes to
  $py -m pip install -q --no-index --no-deps --no-compile --target "$site" "$repo"/.whl/*.whl \
    >> "$1" 2>&1 || { echo "installing the wheels failed:"; tail -20 "$1"; return 1; }
  export PYTHONPATH=$site
}
