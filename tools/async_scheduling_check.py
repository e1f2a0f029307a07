"""Asynchronous scheduling against steps one at a time, on one loaded engine.

Runs the offline workload of `bench engine` (random prompts, greedy, ignore_eos) with
`async_scheduling` off and on, alternating, and reports output tokens/s, steps/s, the host
time planning took per step, and whether greedy tokens were the same in both modes (a second,
small workload compared token for token). On a GPU the host's planning and input building for
the next step overlap the device's current one; on the CPU the device work runs on the calling
thread, so there is nothing to overlap and the two modes should be alike.

    python tools/async_scheduling_check.py                      # embedded model, CPU
    python tools/async_scheduling_check.py --random-weights llama-3.1-8b --device cuda \\
        --requests 96 --out OUT_DIR
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

from rich.console import Console
from rich.table import Table

from tokenfactory.bench.engine_bench import BenchOptions, bench_offline
from tokenfactory.engine.config import EngineConfig
from tokenfactory.engine.engine import Engine
from tokenfactory.engine.sampling_params import SamplingParams


def _span(text: str) -> tuple[int, int]:
    lo, _, hi = text.partition("..")
    return int(lo), int(hi or lo)


def _set_mode(engine: Engine, on: bool) -> None:
    """Switch modes with an empty prefix cache, so that no run reuses the last one's prompts."""
    engine.config = replace(engine.config, async_scheduling=on)
    engine.use_policy(engine.config.policy)


def _offline(engine: Engine, opts: BenchOptions, console: Console) -> dict:
    before = engine.stats.total_steps
    result = bench_offline(engine, opts, console)
    steps = engine.stats.recent(engine.stats.total_steps - before)
    result["steps"] = len(steps)
    result["steps_per_s"] = len(steps) / result["elapsed_s"]
    result["schedule_ms_mean"] = 1e3 * statistics.fmean(s.schedule_s for s in steps)
    result["steps_ran_ahead"] = sum(s.ran_ahead for s in steps)
    return result


def _greedy_tokens(engine: Engine, n: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    vocab = engine.model_config.vocab_size
    prompts = [[rng.randrange(256, vocab) for _ in range(rng.randint(16, 200))] for _ in range(n)]
    params = [
        SamplingParams(temperature=0.0, max_tokens=rng.randint(8, 64), ignore_eos=True)
        for _ in range(n)
    ]
    return [c.token_ids for c in engine.generate(prompts, params)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="GGUF or HF directory (default: embedded)")
    ap.add_argument("--random-weights", default=None, help="an architecture, e.g. llama-3.1-8b")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--input-len", default="100..512")
    ap.add_argument("--output-len", default="64..256")
    ap.add_argument("--rounds", type=int, default=1, help="off/on pairs, alternated")
    ap.add_argument("--out", type=Path, default=None, help="directory for async_check.json")
    args = ap.parse_args(argv)
    console = Console(stderr=True)

    config = EngineConfig(device=args.device, num_threads=args.threads, max_num_seqs=512)
    if args.random_weights:
        engine = Engine.from_random_weights(args.random_weights, config)
    else:
        engine = Engine.from_model_path(args.model, config)
    opts = BenchOptions(
        num_requests=args.requests,
        input_len=_span(args.input_len),
        output_len=_span(args.output_len),
    )
    runs: list[dict] = []
    for r in range(args.rounds):
        for on in (False, True):
            _set_mode(engine, on)
            run = _offline(engine, opts, console) | {"async_scheduling": on, "round": r}
            runs.append(run)
            console.print(
                f"round {r} async={'on' if on else 'off'}: "
                f"{run['output_tokens_per_s']:.1f} output tok/s, {run['steps_per_s']:.1f} steps/s"
            )
    tokens = {}
    for on in (False, True):
        _set_mode(engine, on)
        tokens[on] = _greedy_tokens(engine, 16, seed=1)
    same = tokens[False] == tokens[True]

    table = Table(title=f"asynchronous scheduling, {engine.model_name} on {engine.device}")
    for col in ("round", "async", "output tok/s", "steps/s", "plan ms/step", "ran ahead"):
        table.add_column(col, justify="right")
    for run in runs:
        table.add_row(
            str(run["round"]),
            "on" if run["async_scheduling"] else "off",
            f"{run['output_tokens_per_s']:.1f}",
            f"{run['steps_per_s']:.1f}",
            f"{run['schedule_ms_mean']:.2f}",
            f"{run['steps_ran_ahead']}/{run['steps']}",
        )
    console.print(table)
    console.print(f"greedy tokens the same in both modes: {same}")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        report = {
            "model": engine.model_name,
            "device": str(engine.device),
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "options": vars(args) | {"out": str(args.out)},
            "runs": runs,
            "greedy_tokens_same": same,
        }
        (args.out / "async_check.json").write_text(json.dumps(report, indent=2))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
