"""Baselines measured beside our engine: Hugging Face transformers generate() and llama.cpp.

This file imports nothing from tokenfactory, so it runs under any Python that has the baseline
library installed (llama-cpp-python often lives in its own environment):

    python src/tokenfactory/bench/baselines.py hf --model FILE.gguf --batch 64 --tokens 64
    /path/to/other/python src/tokenfactory/bench/baselines.py llama-cpp --model FILE.gguf
    /path/to/other/python src/tokenfactory/bench/baselines.py llama-cpp --model FILE.gguf \
        --prompt-file tools/prompts/agent.txt --tokens 256 --prompt-lookup 8

It prints one JSON object: decode tokens/s (all sequences together) and per sequence.
With ``--prompt-file`` (llama-cpp only) the file's text is one user message, formatted with the
GGUF's chat template, and decoded greedily until EOS or ``--tokens``; ``--prompt-lookup N``
adds llama-cpp-python's prompt-lookup drafts (``LlamaPromptLookupDecoding``, N tokens each).
The decode rate then leaves out the first token (the prefill); the text and token counts come
with it, so the same prompt can be run on our engine with the same number of tokens.
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
                ids,
                attention_mask=mask,
                max_new_tokens=n,
                min_new_tokens=n,
                do_sample=False,
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

    llm = Llama(
        model_path=str(model),
        n_ctx=prompt_len + tokens + 16,
        n_threads=threads,
        n_batch=512,
        verbose=False,
    )
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


def bench_llama_cpp_text(
    model: Path, text: str, tokens: int, threads: int, lookup: int, repeats: int
) -> dict:
    """Greedy decode of one chat message, optionally with prompt-lookup drafts."""
    from llama_cpp import Llama
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter
    from llama_cpp.llama_speculative import LlamaPromptLookupDecoding

    draft = LlamaPromptLookupDecoding(num_pred_tokens=lookup) if lookup else None
    llm = Llama(
        model_path=str(model),
        n_ctx=4096,
        n_threads=threads,
        n_threads_batch=threads,
        n_batch=512,
        draft_model=draft,
        # verifying drafts reads the logits of every drafted position (without it the
        # scores buffer holds n_batch rows and overflows once the context passes them)
        logits_all=draft is not None,
        verbose=False,
    )
    eos = llm.token_eos()

    def piece(tok: int) -> str:  # a special token's text, as the chat template writes it
        return llm.detokenize([tok], special=True).decode()

    formatter = Jinja2ChatFormatter(
        llm.metadata["tokenizer.chat_template"],
        eos_token=piece(eos),
        bos_token=piece(llm.token_bos()),
    )
    prompt_text = formatter(messages=[{"role": "user", "content": text}]).prompt
    prompt = llm.tokenize(prompt_text.encode(), add_bos=True, special=True)

    def run() -> tuple[list[int], list[float]]:
        out: list[int] = []
        stamps = [time.perf_counter()]
        for tok in llm.generate(prompt, temp=0.0, top_k=1, reset=True):
            if tok == eos:
                break
            out.append(tok)
            stamps.append(time.perf_counter())
            if len(out) >= tokens:
                break
        return out, stamps

    run()  # warm-up
    rates: list[float] = []
    prefill: list[float] = []
    out: list[int] = []
    for _ in range(repeats):
        out, stamps = run()
        prefill.append(stamps[1] - stamps[0])
        rates.append((len(out) - 1) / (stamps[-1] - stamps[1]))
    return {
        "baseline": "llama-cpp-python",
        "batch": 1,
        "prompt_lookup": lookup,
        "prompt_tokens": len(prompt),
        "completion_tokens": len(out),
        "max_tokens": tokens,
        "prefill_s": sorted(prefill)[len(prefill) // 2],
        "decode_tokens_per_s": sorted(rates)[len(rates) // 2],
        "decode_tokens_per_s_runs": rates,
        "completion_token_ids": out,
        "completion": llm.detokenize(out).decode(errors="replace"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("which", choices=["hf", "llama-cpp"])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument(
        "--prompt-file", type=Path, help="llama-cpp: one chat message (instead of a random prompt)"
    )
    parser.add_argument(
        "--prompt-lookup",
        type=int,
        default=0,
        help="llama-cpp: prompt-lookup draft tokens (0: off)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="--prompt-file: runs (median)")
    args = parser.parse_args(argv)
    if args.prompt_file is not None or args.prompt_lookup:
        if args.which != "llama-cpp" or args.prompt_file is None:
            parser.error("--prompt-file and --prompt-lookup: llama-cpp, with a --prompt-file")
        result = bench_llama_cpp_text(
            args.model,
            args.prompt_file.read_text(),
            args.tokens,
            args.threads,
            args.prompt_lookup,
            args.repeats,
        )
    elif args.which == "hf":
        result = bench_hf(args.model, args.batch, args.prompt_len, args.tokens, args.threads)
    else:
        result = bench_llama_cpp(args.model, args.prompt_len, args.tokens, args.threads)
    json.dump(result, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
