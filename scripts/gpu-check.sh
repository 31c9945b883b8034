#!/usr/bin/env bash
# One-command GPU check (under 10 minutes on one GPU): sets up .venv (scripts/setup.sh), then runs the CUDA-marked
# tests, both benchmarks on CUDA and a synthetic study timing, and prints one summary line per part at the end.
# Without a usable GPU it says so in one line (naming the driver or wheel problem when it can) and exits 2.
# NEMESIS_TORCH_INDEX_URL (e.g. https://download.pytorch.org/whl/cu121) installs torch from another wheel index.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
echo "== setup" >&2
if ! scripts/setup.sh; then
    echo "gpu-check: scripts/setup.sh failed (its error is above)" >&2
    exit 1
fi

# Why torch sees no GPU, in one line: no driver, a CPU-only wheel, or a wheel newer than the driver.
diagnose() {
    local torch_cuda="$1" probe_errors="$2"
    if ! command -v nvidia-smi >/dev/null 2>&1; then
        echo "no NVIDIA driver (nvidia-smi not found); run this on a machine with an NVIDIA GPU and its driver"
    elif [ "$torch_cuda" = "None" ]; then
        echo "the installed torch wheel is CPU-only; rerun with NEMESIS_TORCH_INDEX_URL=https://download.pytorch.org/whl/cu121 (or cu124)"
    else
        local driver
        driver="$(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>&1 | head -n 1)"
        local hint="${probe_errors:+ (torch: $probe_errors)}"
        echo "torch is built for CUDA $torch_cuda and NVIDIA driver $driver does not run it$hint; update the driver, or rerun with NEMESIS_TORCH_INDEX_URL=https://download.pytorch.org/whl/cu121 for CUDA 12.1 wheels"
    fi
}

PROBE="$(mktemp)"
"$PY" - >"$PROBE.out" 2>"$PROBE.err" <<'EOF'
import torch
print(torch.version.cuda)
print(torch.cuda.device_count() if torch.cuda.is_available() else 0)
EOF
probe_rc=$?
if [ $probe_rc -ne 0 ]; then
    cat "$PROBE.err" >&2
    echo "gpu-check: $PY cannot import torch (the error is above)" >&2
    exit 2
fi
torch_cuda="$(sed -n 1p "$PROBE.out")"
gpus="$(sed -n 2p "$PROBE.out")"
if [ "${gpus:-0}" -eq 0 ]; then
    errors="$(grep -v '^\s*$' "$PROBE.err" | grep -iE 'driver|cuda' | head -n 1 | sed 's/^ *//')"
    echo "gpu-check: no GPU visible to torch: $(diagnose "$torch_cuda" "$errors")" >&2
    exit 2
fi

export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export NEMESIS_TEST_CHECKPOINTS="${NEMESIS_TEST_CHECKPOINTS:-$PWD/checkpoints}"  # tests and benchmarks share the tiny CLIP
LOG="$(mktemp -d)/gpu-check"
STATUS=0
step() {  # step NAME TIMEOUT_SECONDS COMMAND...: run (output shown and kept), then one summary line for the part
    local name="$1" limit="$2"; shift 2
    local started=$SECONDS
    echo "== $name" >&2
    timeout "$limit" "$@" 2>&1 | tee "$LOG.$name" >&2
    local rc=${PIPESTATUS[0]}
    local result
    result="$(grep -h -E "^(case |speedup|gpu-study )|[0-9]+ (passed|failed|skipped|deselected)" "$LOG.$name" | tr '\n' ';' | sed 's/;$//')"
    [ $rc -eq 124 ] && result="timed out after ${limit}s; $result"
    echo "$name: exit $rc in $((SECONDS - started))s: ${result:-no result line (see its output above)}" >>"$LOG.summary"
    [ "$rc" -eq 0 ] || STATUS=1
}
step tests 150 "$PY" -m pytest -q -p no:cacheprovider -m cuda tests
step bench_train 120 "$PY" benchmarks/bench_train.py --quick --device cuda --checkpoints "$NEMESIS_TEST_CHECKPOINTS"
step bench_corrupt 90 "$PY" benchmarks/bench_corrupt.py --quick --device cuda --checkpoints "$NEMESIS_TEST_CHECKPOINTS"
step gpu_study 170 "$PY" benchmarks/gpu_study.py --epochs 1 --budget 60  # timeouts sum to 530s

echo
echo "---- gpu-check ($(date -u +%Y-%m-%dT%H:%MZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown))"
"$PY" -c "import torch; print(f'gpu: {torch.cuda.get_device_name()}, torch {torch.__version__}, CUDA {torch.version.cuda}')"
cat "$LOG.summary"
exit $STATUS
