"""How many greedy answers change when requests share steps: N requests at once against each
made alone, on the embedded model in bf16.

    python tools/batch_invariance_check.py [--requests 32] [--tokens 24] [--budget 64]

Six short chat questions, each answered alone first; then `--requests` of them (in turn)
arrive together under fcfs with a token budget of `--budget` per step, so prompts run in chunks
beside other requests' decodes. Prints how many answers differ from the same question alone.
What can differ: a prompt's own tokens, computed in bf16 matmuls whose rounding depends on how
many rows share the step, and prompts that hit the prefix cache (computed in spans of another
length); decodes of up to `q4_linear.decode_max_rows()` rows read the same kernels whatever
shares their step.
"""

from __future__ import annotations

import argparse
import json

from tokenfactory.engine.config import EngineConfig
from tokenfactory.engine.engine import Engine
from tokenfactory.engine.sampling_params import SamplingParams

QUESTIONS = [
    "Count to 3.",
    "What is 2 + 2?",
    "Name a prime number.",
    "Say hello.",
    "Write a haiku about the sea.",
    "Why is the sky blue?",
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=24)
    ap.add_argument("--budget", type=int, default=64, help="tokens per step (chunked prefill)")
    args = ap.parse_args()
    if args.requests < 1 or args.tokens < 1 or args.budget < 1:
        raise SystemExit("--requests, --tokens and --budget must be at least 1")
    engine = Engine.from_model_path(None, EngineConfig())
    params = SamplingParams(max_tokens=args.tokens, temperature=0.0)
    prompts = {q: engine.chat_prompt([{"role": "user", "content": q}]) for q in QUESTIONS}
    alone = {q: engine.generate(p, params)[0].token_ids for q, p in prompts.items()}
    shared = Engine(
        engine.model,
        engine.tokenizer,
        EngineConfig(max_num_batched_tokens=args.budget, max_num_seqs=max(args.requests, 1)),
    )
    asked = [QUESTIONS[i % len(QUESTIONS)] for i in range(args.requests)]
    answers = shared.generate([prompts[q] for q in asked], params)
    differ = [q for q, a in zip(asked, answers, strict=True) if a.token_ids != alone[q]]
    print(f"{len(differ)} of {args.requests} answers differ from the question asked alone")
    print(json.dumps({"requests": args.requests, "differ": len(differ), "questions": differ}))


if __name__ == "__main__":
    main()
