"""What a verified draft token adds to a batch-1 decode step of the embedded model.

    python tools/draft_row_cost.py tools/prompts/chat.txt --tokens 256 --rounds 2

Generates greedily with n-gram speculation on, then compares the engine's own step times:
the median decode step with no draft token against those verifying 1, 2, ... draft tokens
(the same process, the same request, interleaved as the policy chose). This is the figure
behind `per_draft_token_s` in the `cpu-prior` entry of data/step_costs.toml.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from tokenfactory.engine.config import EngineConfig
from tokenfactory.engine.engine import Engine
from tokenfactory.engine.sampling_params import SamplingParams


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("prompt_file", type=Path)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    engine = Engine.from_model_path(None, EngineConfig(speculation="ngram", max_model_len=4096))
    prompt = engine.chat_prompt([{"role": "user", "content": args.prompt_file.read_text()}])
    params = SamplingParams(temperature=0.0, max_tokens=args.tokens)
    engine.generate(prompt, params)  # warm-up
    by_drafts: dict[int, list[float]] = {}
    for _ in range(args.rounds):
        engine.stats.clear()
        engine.generate(prompt, params)
        for s in engine.stats.recent():
            if s.num_prefill_tokens == 0:
                by_drafts.setdefault(s.num_draft_tokens, []).append(s.duration_s * 1e3)
    plain = statistics.median(by_drafts[0])
    for k, times in sorted(by_drafts.items()):
        median = statistics.median(times)
        extra = f", +{(median - plain) / k:.2f} ms per draft token" if k else ""
        print(f"{k} draft tokens: {len(times)} steps, median {median:.2f} ms{extra}")


if __name__ == "__main__":
    main()
