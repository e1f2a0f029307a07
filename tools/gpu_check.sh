#!/usr/bin/env bash
# The GPU check in one go, about 10 minutes on one H100/H200, no network. Parts, most wanted
# first, each with its own time limit and JSON in the output directory; a part that fails or
# runs out of time is recorded in parts.json and the next one runs anyway:
#
#   1. bench_8b     `bench engine --device cuda --random-weights llama-3.1-8b`: decode sweep
#                   at batch 1, 16, 64, 128, 256 (context ~1k) beside the memory roofline
#                   measured in the same run, prefill of 2k-token prompts, offline 256
#                   requests with input and output uniform in 100..1024 (engine-cuda.json,
#                   bench/gpu_check.json)
#   2. async        asynchronous scheduling against steps one at a time: 96 offline
#                   requests (input and output 100..512) in each mode on one engine, and
#                   greedy tokens compared (tools/async_scheduling_check.py; async_check.json)
#   3. fp8_decode   single-user decode, FP8 weights against bf16, and both weight sizes
#                   (fp8_decode.json; aim 1.7x)
#   4. tier_check   fcfs, priority and tier on one engine in process, gpu tier preset
#                   (gpu_tier_check.json)
#   5. correctness  the CUDA engine's logits against CPU float32, batch invariance, prefix
#                   cache, CUDA graphs against eager (correctness/gpu_check.json)
#   6. pytest_gpu   the GPU tests (pytest/gpu_check.json, pytest/pytest_gpu.log)
#
# Needs only PyTorch with CUDA, Triton and numpy/rich/pydantic (none of the server's
# dependencies). Limits in seconds can be changed through the environment (BENCH_8B_S,
# ASYNC_S, FP8_DECODE_S, TIER_CHECK_S, CORRECTNESS_S, PYTEST_GPU_S), and ASYNC_ARGS,
# FP8_DECODE_ARGS and TIER_CHECK_ARGS add arguments to those parts (e.g. "--model embedded --device cpu" for a
# dry run on a CPU). The limits add up to about 11 minutes: where a command may run 10 at
# most, leave a part out with SKIP_PARTS (e.g. SKIP_PARTS="pytest_gpu").
#
#   bash tools/gpu_check.sh [OUT_DIR]
#
# Exit status 0 when every part exited 0.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-gpu-check-out}}"
mkdir -p "$out"
# Wheels carried for a missing package (e.g. gguf for a --model GGUF file), if any.
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl && export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
parts="$out/parts.jsonl"
: >"$parts"
failed=0

# run_part NAME LIMIT_S COMMAND...: the command's output to NAME.log, its exit status and
# time to parts.jsonl; never stops the script.
run_part() {
    local name="$1" limit="$2"
    shift 2
    if [[ " ${SKIP_PARTS:-} " == *" $name "* ]]; then
        echo "== $name: skipped (SKIP_PARTS)"
        printf '{"part": "%s", "skipped": true}\n' "$name" >>"$parts"
        return
    fi
    local t0=$SECONDS
    echo "== $name (limit ${limit} s)"
    timeout --kill-after=15 "$limit" "$@" >"$out/$name.log" 2>&1
    local rc=$?
    tail -n 25 "$out/$name.log"
    local took=$((SECONDS - t0))
    local timed_out=false
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then timed_out=true; fi
    printf '{"part": "%s", "rc": %d, "seconds": %d, "limit_s": %d, "timed_out": %s}\n' \
        "$name" "$rc" "$took" "$limit" "$timed_out" >>"$parts"
    echo "== $name: exit $rc after ${took} s"
    [ "$rc" -eq 0 ] || failed=1
}

nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version --format=csv 2>&1 \
    | tee "$out/nvidia-smi.txt"

# bench/gpu_check.py runs the benchmark in a subprocess and records it as it goes; the
# engine-cuda.json it leaves is the benchmark's own output.
bench_s="${BENCH_8B_S:-200}"
run_part bench_8b "$((bench_s + 20))" \
    "$PY" -m tokenfactory.bench.gpu_check --out "$out" --skip small --skip real \
    --skip pytest --budget-s "$bench_s"
mkdir -p "$out/bench" && mv -f "$out/gpu_check.json" "$out/bench/" 2>/dev/null
run_part async "${ASYNC_S:-75}" \
    "$PY" tools/async_scheduling_check.py --random-weights llama-3.1-8b --device cuda \
    --requests 96 --input-len 100..512 --output-len 100..512 --out "$out" ${ASYNC_ARGS:-}
run_part fp8_decode "${FP8_DECODE_S:-80}" \
    "$PY" tools/fp8_decode_check.py --out "$out" --context 1024 --steps 32 \
    ${FP8_DECODE_ARGS:-}
tier_s="${TIER_CHECK_S:-110}"
run_part tier_check "$((tier_s + 20))" \
    "$PY" tools/gpu_tier_check.py --out "$out" --preset gpu \
    --crowd-policies fcfs,priority,tier --policies fcfs,priority,tier \
    --crowd 128 --rates 16 --duration 10 --budget-s "$tier_s" ${TIER_CHECK_ARGS:-}
correctness_s="${CORRECTNESS_S:-70}"
run_part correctness "$((correctness_s + 20))" \
    "$PY" -m tokenfactory.bench.gpu_check --out "$out/correctness" --skip bench \
    --skip pytest --budget-s "$correctness_s"
pytest_s="${PYTEST_GPU_S:-60}"
run_part pytest_gpu "$((pytest_s + 15))" \
    "$PY" -m tokenfactory.bench.gpu_check --out "$out/pytest" --skip small --skip real \
    --skip bench --budget-s "$pytest_s"

"$PY" - "$parts" "$out/parts.json" <<'EOF'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
json.dump({"parts": rows, "all_passed": all(r.get("rc", 0) == 0 for r in rows)},
          open(sys.argv[2], "w"), indent=2)
EOF
echo "== parts: $(tr '\n' ' ' <"$parts")"
exit "$failed"
