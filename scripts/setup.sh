#!/usr/bin/env bash
# Create .venv and install the toolkit (CPU is enough). Safe to re-run.
# NEMESIS_TORCH_INDEX_URL: the wheel index torch and torchvision come from (default: PyPI, whose Linux wheels
# need a recent NVIDIA driver), e.g. https://download.pytorch.org/whl/cu121 for CUDA 12.1 wheels on older drivers
# or https://download.pytorch.org/whl/cpu for CPU-only wheels.
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
torch_index=()
if [ -n "${NEMESIS_TORCH_INDEX_URL:-}" ]; then
  torch_index=(--index-url "$NEMESIS_TORCH_INDEX_URL")
fi
pip_install ${torch_index[@]+"${torch_index[@]}"} "torch==2.14.1" "torchvision==0.29.1"
pip_install -e ".[dev]"
