#!/usr/bin/env bash
# Install everything the tests need (Python deps into .venv, Debian's chromium for the browser test) and run them.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup_env.sh test
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
      || echo "warning: could not install chromium; the browser test will be skipped"
  else
    echo "warning: chromium is not installed and this is not root; the browser test will be skipped"
  fi
fi
export FSL_APP_CACHE="${FSL_APP_CACHE:-$PWD/.pytest_cache/fsl_app_cache}"
exec .venv/bin/python -m pytest "$@"
