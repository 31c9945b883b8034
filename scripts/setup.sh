#!/usr/bin/env bash
# Create .venv and install the toolkit (CPU is enough). Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# torch and torchvision are pinned as a pair: mixing a torchvision wheel built for another torch fails at import.
.venv/bin/python -m pip install --quiet --disable-pip-version-check "torch==2.14.1" "torchvision==0.29.1"
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[dev]"
