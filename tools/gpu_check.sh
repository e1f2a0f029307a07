#!/usr/bin/env bash
# The GPU check in one go: correctness of the CUDA path, the GPU tests, then
# `bench engine --device cuda --random-weights llama-3.1-8b` (sweep at context ~1k, 2k-token
# prefill, offline 256 requests). Needs only PyTorch with CUDA, Triton and numpy/rich (none
# of our other dependencies, no network). JSON and logs go to the directory given (or $OUT).
#
#   bash tools/gpu_check.sh [OUT_DIR] [extra gpu_check args, e.g. --budget-s 420]
#
# Runs in about 3-8 minutes on an H100/H200 (budget 450 s by default: the benchmark gets what
# the checks leave). Exit status 0 when every correctness check passed.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-gpu-check-out}}"
shift || true
mkdir -p "$out"
# Wheels carried for a missing package (e.g. gguf for a --model GGUF file), if any.
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl && export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version --format=csv 2>&1 \
    | tee "$out/nvidia-smi.txt"
python3 -m tokenfactory.bench.gpu_check --out "$out" "$@" 2>&1 | tee "$out/gpu_check.log"
exit "${PIPESTATUS[0]}"
