#!/usr/bin/env bash
# Set up (if needed) and run the main job on the embedded default: nemesis demo.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec .venv/bin/nemesis demo "$@"
