#!/usr/bin/env bash
# GPU check (issue 5, item 6). On a CUDA machine with no network, in about 5 minutes:
#   1. installs the service's dependencies, onnxruntime-gpu and the CUDA 13 / cuDNN 9 wheels from a local folder;
#   2. confirms CUDAExecutionProvider is really active (session.get_providers()), and names the GPU;
#   3. times the model alone at batch 1, 8, 64, 256 in fp32, and in fp16 when `python -m model export`
#      has `--precision fp16` (otherwise it says fp16 is skipped);
#   4. runs the end-to-end benchmark (`python -m bench --device cuda`) against the real server on CUDA;
#   5. prints one summary table (the full report and JSON are written to bench/results/gpu/).
# It stops with a non-zero status and the reason as soon as CUDA is not active.
#
# Prepare the wheel folder beforehand, on a machine with network, from the repository root
# (once per Python version the GPU host may have; the lock pins versions and hashes):
#
#   for py in 3.11 3.12; do
#     pip download --dest wheels --only-binary=:all: --implementation cp --python-version "$py" \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#       --require-hashes -r requirements/cuda.lock
#   done
#
# requirements/cuda.lock is the runtime lock plus onnxruntime-gpu[cuda,cudnn]; the benchmark itself needs
# nothing else (its load generator is stdlib). Copy the repository and the wheel folder to the GPU machine, then:
#
#   bench/gpu_check.sh [WHEEL_DIR]      # default WHEEL_DIR: ./wheels
#
# Environment: PYTHON (interpreter to build the venv with, default python3), GPU_VENV (default
# /tmp/alexnet-serve-gpu-venv; reused when present), ALEXNET_DEVICE_ID (default 0).
set -euo pipefail

cd "$(dirname "$0")/.."
WHEELS="${1:-wheels}"
PYTHON="${PYTHON:-python3}"
GPU_VENV="${GPU_VENV:-/tmp/alexnet-serve-gpu-venv}"
DEVICE_ID="${ALEXNET_DEVICE_ID:-0}"
OUT="bench/results/gpu"

fail() {
    echo "gpu_check: FAIL: $*" >&2
    exit 1
}

command -v nvidia-smi >/dev/null || fail "nvidia-smi not found: no NVIDIA driver on this machine"
GPU_NAME="$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader --id="$DEVICE_ID")" \
    || fail "nvidia-smi cannot see GPU $DEVICE_ID"
echo "gpu_check: GPU $DEVICE_ID: $GPU_NAME"

[ -d "$WHEELS" ] || fail "wheel folder '$WHEELS' not found; prepare it with the pip download command at the top of $0"
if [ ! -x "$GPU_VENV/bin/python" ]; then
    "$PYTHON" -m venv "$GPU_VENV"
fi
echo "gpu_check: installing requirements/cuda.lock from $WHEELS (no network)"
"$GPU_VENV/bin/python" -m pip install --quiet --no-index --find-links "$WHEELS" --require-hashes \
    -r requirements/cuda.lock
PY="$GPU_VENV/bin/python"
# The repository root is the working directory, so `python -m app|model|bench` import from the checkout.
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

mkdir -p "$OUT"
FP32="$OUT/alexnet-fp32.onnx"
[ -f "$FP32" ] || "$PY" -m model export --weights random --output "$FP32"

"$PY" -m bench.cuda "$FP32" --device-id "$DEVICE_ID" || fail "CUDAExecutionProvider is not active (see above)"

FP16_ARGS=()
EXPORT_HELP="$("$PY" -m model export --help)"
if grep -q -- "--precision" <<<"$EXPORT_HELP"; then
    FP16="$OUT/alexnet-fp16.onnx"
    [ -f "$FP16" ] || "$PY" -m model export --weights random --precision fp16 --output "$FP16"
    FP16_ARGS=(--fp16-model "$FP16")
else
    echo "gpu_check: fp16 skipped: this checkout's 'python -m model export' has no --precision option yet"
fi

"$PY" -m bench --device cuda --model "$FP32" ${FP16_ARGS[@]+"${FP16_ARGS[@]}"} \
    --server-env "ALEXNET_DEVICE_ID=$DEVICE_ID" --output "$OUT/latest.json" --print summary
echo "gpu_check: full report $OUT/latest.md, JSON $OUT/latest.json; GPU: $GPU_NAME"
