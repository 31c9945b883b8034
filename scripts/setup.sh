#!/usr/bin/env bash
# Create .venv and install the toolkit (CPU is enough). Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
pip_install() {
  # Some pip configurations warn about every missing index folder; keep the log readable.
  .venv/bin/python -m pip install --quiet --disable-pip-version-check "$@" 2>&1 \
    | { grep -v "is ignored: it is neither a file nor a directory" || true; }
  return "${PIPESTATUS[0]}"
}
# torch and torchvision are pinned as a pair: a torchvision wheel built for another torch fails at import.
pip_install "torch==2.14.1" "torchvision==0.29.1"
pip_install -e ".[dev]"
