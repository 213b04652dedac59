#!/usr/bin/env bash
# Create (or reuse) .venv in the repo root and install fsl_app into it. Usage: scripts/setup_env.sh [extras]
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
python_bin="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$python_bin" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
# torch first, pinned to the releases this project is tested with (a CPU/CUDA wheel pip picks for this machine)
.venv/bin/python -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1" \
  || .venv/bin/python -m pip install --quiet "torch>=2.2,<2.15" "torchvision>=0.17,<0.30"
spec="."
[ -n "$extras" ] && spec=".[$extras]"
.venv/bin/python -m pip install --quiet -e "$spec"
