#!/usr/bin/env bash
# What verifying draft tokens costs on a GPU, in one go: `python -m
# tokenfactory.bench.spec_verify_cost` on llama-3.1-8b random weights. For batch 1..64 and
# draft depth 0..8 at context ~1k, the step where every sequence verifies k draft tokens
# (median of 15 timed reps after 3 untimed), the per_draft_token_s fits, the best depth per
# batch at the assumed acceptance rates (0.5, 0.7, 0.9 unless --acceptance says otherwise),
# and which tiers' per-user promises (shipped gpu preset) hold at which batch. Needs only
# PyTorch with CUDA, Triton, numpy and rich (matplotlib for the plot, skipped without it);
# no network, nothing installed. JSON, plot and log go to the directory given (or $OUT).
#
#   bash tools/gpu_spec_check.sh [OUT_DIR] [extra spec_verify_cost args, e.g. --acceptance 0.6,0.8]
#
# About 2-4 minutes on an H100/H200, at most about 6: no new batch starts after 270 s, and
# the run is killed at 340 s (the JSON, rewritten after each batch, keeps what was measured).
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-gpu-spec-check-out}}"
shift || true
mkdir -p "$out"
export PYTHONPATH="$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version --format=csv 2>&1 \
    | tee "$out/nvidia-smi.txt"
timeout -k 10 340 python3 -m tokenfactory.bench.spec_verify_cost \
    --device cuda --random-weights llama-3.1-8b --context 1024 \
    --batches 1,2,4,8,16,32,64 --depths 0,1,2,3,4,5,6,7,8 --warmup 3 --reps 15 \
    --budget-s 270 --out "$out" "$@" 2>&1 | tee "$out/spec_verify_cost.log"
rc="${PIPESTATUS[0]}"
[ "$rc" = 124 ] && echo "spec_verify_cost timed out after 340 s: $out/spec_verify_cost.json has the batches measured"
exit "$rc"
