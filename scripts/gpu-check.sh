#!/usr/bin/env bash
# One-command GPU check (about 10 minutes on one GPU): CUDA-marked tests, both benchmarks on CUDA, a synthetic
# study timing; prints paste-ready lines at the end. Without a GPU it fails at once (exit 2).
# Uses .venv/bin/python when present (scripts/setup.sh makes it), else python on PATH; PYTHON=... overrides.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python)}"
if ! "$PYTHON" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "gpu-check: no CUDA device visible to torch ($PYTHON); run this on a machine with an NVIDIA GPU and a CUDA build of torch" >&2
    exit 2
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export NEMESIS_TEST_CHECKPOINTS="${NEMESIS_TEST_CHECKPOINTS:-$PWD/checkpoints}"  # tests and benchmarks share the tiny CLIP
LOG="$(mktemp -d)/gpu-check"
STATUS=0
step() {  # step NAME TIMEOUT_SECONDS COMMAND...: run, keep the output, note failures and time
    local name="$1" limit="$2"; shift 2
    local started=$SECONDS
    echo "== $name" >&2
    timeout "$limit" "$@" >"$LOG.$name" 2>&1
    local rc=$?
    cat "$LOG.$name" >&2
    echo "step $name: exit $rc in $((SECONDS - started))s" >>"$LOG.summary"
    [ $rc -eq 0 ] || STATUS=1
}
step tests 90 "$PYTHON" -m pytest -q -p no:cacheprovider -m cuda tests/test_precision.py
step bench_train 120 "$PYTHON" benchmarks/bench_train.py --device cuda --checkpoints "$NEMESIS_TEST_CHECKPOINTS"
if "$PYTHON" benchmarks/bench_corrupt.py --help 2>/dev/null | grep -q -- "--device"; then
    step bench_corrupt 90 "$PYTHON" benchmarks/bench_corrupt.py --quick --device cuda --checkpoints "$NEMESIS_TEST_CHECKPOINTS"
else
    echo "step bench_corrupt: skipped (benchmarks/bench_corrupt.py has no --device option yet)" >>"$LOG.summary"
fi
step gpu_study 170 "$PYTHON" benchmarks/gpu_study.py --budget 100
step bench_study 150 "$PYTHON" benchmarks/bench_study.py --quick --device cuda  # timeouts sum to 620s

echo
echo "---- paste-ready ($(date -u +%Y-%m-%dT%H:%MZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown))"
"$PYTHON" -c "import torch; print(f'gpu: {torch.cuda.get_device_name()}, torch {torch.__version__}, CUDA {torch.version.cuda}')"
grep -h -E "^(case |gpu-study )|[0-9]+ (passed|failed)" "$LOG".tests "$LOG".bench_* "$LOG".gpu_study 2>/dev/null
cat "$LOG.summary"
exit $STATUS
