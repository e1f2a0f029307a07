"""Single-user decode on FP8 weights against bf16: step time, tokens/s and weight bytes.

One engine per weight format, built the same way (`--quantization fp8` or not), each timed
with `bench engine`'s decode measurement (batch 1, context ~`--context`), one after the
other in this process, beside the roofline measured in the same run. On a GPU: the
Llama-3.1-8B shape with random weights (speed does not depend on weight values); on a CPU:
the embedded model (`--model embedded`), whose bf16 baseline is the plain bf16 path (the
Q4_1 decode kernels off, since FP8 turns them off too).

Writes `fp8_decode.json` after each engine, so a run cut short keeps what it measured.

    PYTHONPATH=src python3 tools/fp8_decode_check.py --out DIR
    .venv/bin/python tools/fp8_decode_check.py --model embedded --device cpu --out DIR
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from tokenfactory.bench.engine_bench import (
    bench_decode,
    machine_description,
    weight_bytes_read_per_step,
)
from tokenfactory.bench.roofline import measure_roofline
from tokenfactory.engine.config import EngineConfig
from tokenfactory.engine.engine import Engine

TARGET_SPEEDUP = 1.7  # what FP8 should buy a memory-bound single-user decode on a GPU


def build(args: argparse.Namespace, quantization: str | None) -> Engine:
    config = EngineConfig(
        device=args.device,
        dtype="bfloat16",
        quantization=quantization,
        q4_decode=False,
        max_num_seqs=4,
        max_model_len=args.context + args.steps + 64,
        num_threads=args.threads,
        seed=0,
    )
    if args.model == "embedded":
        return Engine.from_model_path(None, config)
    if args.model:
        return Engine.from_model_path(args.model, config)
    return Engine.from_random_weights(args.arch, config)


def parameter_bytes(engine: Engine) -> int:
    return sum(p.numel() * p.element_size() for p in engine.model.parameters())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "fp8-decode-out")))
    ap.add_argument("--arch", default="llama-3.1-8b")
    ap.add_argument("--model", default=None, help="a GGUF/HF path, or 'embedded'")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--context", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=32, help="timed decode steps (median taken)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per format (best kept)")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "fp8_decode.json"
    result: dict[str, Any] = {
        "schema": "tokenfactory.fp8_decode/1",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
        "torch": torch.__version__,
        "context": args.context,
        "runs": {},
    }

    def save() -> None:
        path.write_text(json.dumps(result, indent=2, default=str))

    roof = None
    for quantization in (None, "fp8"):
        name = quantization or "bf16"
        t0 = time.monotonic()
        try:
            engine = build(args, quantization)
        except (ValueError, RuntimeError) as exc:  # e.g. a GPU without FP8: say so, go on
            result["runs"][name] = {"error": f"{type(exc).__name__}: {exc}"}
            save()
            print(f"{name}: {exc}", flush=True)
            continue
        if roof is None:
            roof = measure_roofline(engine.device, engine.dtype)
            result["machine"] = machine_description(engine)
            result["roofline"] = roof.to_dict()
        rows = [
            bench_decode(engine, 1, args.context, args.steps, roof, seed=i)
            for i in range(args.repeats)
        ]
        best = min((r for r in rows if "step_ms" in r), key=lambda r: r["step_ms"], default=None)
        result["runs"][name] = {
            "model": engine.model_name,
            "parameter_bytes": parameter_bytes(engine),
            "weight_bytes_read_per_step": weight_bytes_read_per_step(engine),
            "decode_batch1": best,
            "step_ms_each_run": [r.get("step_ms") for r in rows],
            "build_and_time_s": time.monotonic() - t0,
        }
        if best:
            print(
                f"{name}: {best['step_ms']:.2f} ms/step = {best['tokens_per_s']:.1f} tokens/s, "
                f"weights {result['runs'][name]['parameter_bytes'] / 2**30:.3f} GiB",
                flush=True,
            )
        save()
        del engine
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    runs = result["runs"]
    try:
        bf16, fp8 = runs["bf16"]["decode_batch1"], runs["fp8"]["decode_batch1"]
        result["speedup"] = bf16["step_ms"] / fp8["step_ms"]
        result["weight_bytes_ratio"] = (
            runs["fp8"]["parameter_bytes"] / runs["bf16"]["parameter_bytes"]
        )
        result["target_speedup"] = TARGET_SPEEDUP
        result["meets_target"] = result["speedup"] >= TARGET_SPEEDUP
        print(
            f"FP8 / bf16: {result['speedup']:.2f}x single-user decode (target "
            f"{TARGET_SPEEDUP}x on a GPU), weight bytes x{result['weight_bytes_ratio']:.3f}",
            flush=True,
        )
    except (KeyError, TypeError):
        result["speedup"] = None
    save()
    return 0 if result.get("speedup") is not None else 1


if __name__ == "__main__":
    sys.exit(main())
