"""Baselines measured beside our engine: Hugging Face transformers generate() and llama.cpp.

This file imports nothing from tokenfactory, so it runs under any Python that has the baseline
library installed (llama-cpp-python often lives in its own environment):

    python src/tokenfactory/bench/baselines.py hf --model FILE.gguf --batch 64 --tokens 64
    /path/to/other/python src/tokenfactory/bench/baselines.py llama-cpp --model FILE.gguf

It prints one JSON object: decode tokens/s (all sequences together) and per sequence.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path


def bench_hf(model: Path, batch: int, prompt_len: int, tokens: int, threads: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(threads)
    kwargs = {"gguf_file": model.name} if model.suffix == ".gguf" else {}
    where = str(model.parent if model.suffix == ".gguf" else model)
    lm = AutoModelForCausalLM.from_pretrained(where, dtype=torch.bfloat16, **kwargs).eval()
    rng = random.Random(0)
    vocab = lm.config.vocab_size
    ids = torch.tensor([[rng.randrange(256, vocab) for _ in range(prompt_len)]] * batch)
    mask = torch.ones_like(ids)

    def run(n: int) -> float:
        start = time.perf_counter()
        with torch.inference_mode():
            lm.generate(
                ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                pad_token_id=0,
            )
        return time.perf_counter() - start

    run(2)  # warm-up
    # Decode rate without the prefill: the difference of two runs of different lengths.
    short, full = run(1), run(tokens + 1)
    per_step = (full - short) / tokens
    return {
        "baseline": "transformers-generate",
        "dtype": "bfloat16",
        "batch": batch,
        "prompt_len": prompt_len,
        "step_ms": per_step * 1e3,
        "tokens_per_s": batch / per_step,
        "tokens_per_s_per_user": 1 / per_step,
    }


def bench_llama_cpp(model: Path, prompt_len: int, tokens: int, threads: int) -> dict:
    import numpy as np
    from llama_cpp import Llama

    llm = Llama(model_path=str(model), n_ctx=prompt_len + tokens + 16, n_threads=threads,
                n_batch=512, verbose=False)
    rng = random.Random(0)
    prompt = [rng.randrange(256, llm.n_vocab()) for _ in range(prompt_len)]

    def run(n: int) -> float:
        llm.reset()
        start = time.perf_counter()
        llm.eval(prompt)
        for _ in range(n):  # greedy decode, one token per eval
            tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            llm.eval([tok])
        return time.perf_counter() - start

    run(2)
    short, full = run(1), run(tokens + 1)
    per_step = (full - short) / tokens
    return {
        "baseline": "llama-cpp-python",
        "batch": 1,
        "prompt_len": prompt_len,
        "step_ms": per_step * 1e3,
        "tokens_per_s": 1 / per_step,
        "tokens_per_s_per_user": 1 / per_step,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("which", choices=["hf", "llama-cpp"])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    args = parser.parse_args(argv)
    if args.which == "hf":
        result = bench_hf(args.model, args.batch, args.prompt_len, args.tokens, args.threads)
    else:
        result = bench_llama_cpp(args.model, args.prompt_len, args.tokens, args.threads)
    json.dump(result, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
