#!/usr/bin/env bash
# Install (into .venv) and start the fsl_app studio on http://127.0.0.1:8501 with the embedded default project store.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup_env.sh
exec .venv/bin/fsl-app ui "$@"
