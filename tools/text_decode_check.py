"""Batch-1 greedy decode of one chat message on our engine: the counterpart of
``bench/baselines.py llama-cpp --prompt-file`` (same message, same chat template, same token
limit), for a like-for-like decode rate.

The decode rate leaves out the prefill and the first token: (n - 1) / (time of a run to n
tokens - time of a run to 1 token), the median of `--repeats` interleaved pairs. Prints one
JSON object per configuration (speculation off, and `--speculation ngram` if asked).

    .venv/bin/python tools/text_decode_check.py tools/prompts/agent.txt --tokens 256
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from tokenfactory.engine.config import EngineConfig
from tokenfactory.engine.engine import Engine
from tokenfactory.engine.sampling_params import SamplingParams


def run(engine: Engine, prompt: str, tokens: int) -> tuple[float, list[int]]:
    params = SamplingParams(temperature=0.0, max_tokens=tokens)
    start = time.perf_counter()
    out = engine.generate(prompt, params)[0]
    return time.perf_counter() - start, out.token_ids


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("prompt_file", type=Path)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--ngram", type=int, default=0, help="also with n-gram drafts of N tokens")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: all)")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    configs = {"off": EngineConfig(num_threads=args.threads)}
    if args.ngram:
        configs[f"ngram{args.ngram}"] = EngineConfig(
            num_threads=args.threads, speculation="ngram", num_speculative_tokens=args.ngram
        )
    engines = {name: Engine.from_model_path(None, cfg) for name, cfg in configs.items()}
    any_engine = next(iter(engines.values()))
    text = args.prompt_file.read_text()
    prompt = any_engine.chat_prompt([{"role": "user", "content": text}])
    prompt_tokens = len(any_engine.tokenizer.encode(prompt))
    for engine in engines.values():  # warm-up
        run(engine, prompt, 8)
    rates: dict[str, list[float]] = {name: [] for name in engines}
    ids: dict[str, list[int]] = {}
    for _ in range(args.repeats):  # interleaved: load from elsewhere hits all alike
        for name, engine in engines.items():
            first, _ = run(engine, prompt, 1)
            full, ids[name] = run(engine, prompt, args.tokens)
            rates[name].append((len(ids[name]) - 1) / (full - first))
    for name, engine in engines.items():
        result = {
            "engine": "tokenfactory",
            "batch": 1,
            "speculation": name,
            "prompt_tokens": prompt_tokens,
            "completion_tokens": len(ids[name]),
            "max_tokens": args.tokens,
            "decode_tokens_per_s": statistics.median(rates[name]),
            "decode_tokens_per_s_runs": rates[name],
            "completion_token_ids": ids[name],
            "completion": engine.tokenizer.decode(ids[name]),
        }
        print(json.dumps(result))


if __name__ == "__main__":
    main()
