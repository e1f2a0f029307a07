"""Fit the step-time model to a staggered load on the embedded model, in process.

The load wanders between 1 and 48 running sequences (prompts of 40 / 160 / 300 tokens in
chunks of at most 256, 20-80 output tokens), so the fit sees decode-only and mixed steps at
every batch size. Prints the fitted coefficients (the form of the "embedded-cpu" entry of
src/tokenfactory/data/step_costs.toml), the median step per batch size with and without
prompt tokens, and the fit's median relative error. About a minute on the 2-core VM.

    .venv/bin/python tools/step_cost_fit.py
"""

from __future__ import annotations

import random
import statistics
import time
from collections import defaultdict

from tokenfactory.engine.config import EngineConfig
from tokenfactory.engine.engine import Engine
from tokenfactory.engine.sampling_params import SamplingParams
from tokenfactory.models.embedded import embedded_model_path
from tokenfactory.scheduling.step_model import StepTimeModel

TARGET_BATCHES = (1, 2, 4, 8, 16, 32, 48, 24, 12, 6, 3, 1, 2, 8, 40, 4)
STEPS_PER_TARGET = 60
BUCKETS = (1, 2, 4, 8, 16, 32, 64)


def main() -> None:
    engine = Engine.from_model_path(embedded_model_path(), EngineConfig(max_num_batched_tokens=256))
    rng = random.Random(0)
    vocab = engine.model_config.vocab_size
    steps = []
    start = time.monotonic()
    engine.stats.clear()
    for i, target in enumerate(TARGET_BATCHES):
        for _ in range(STEPS_PER_TARGET):
            while engine.num_unfinished < target:
                prompt = [rng.randrange(100, vocab - 1) for _ in range(rng.choice((40, 160, 300)))]
                params = SamplingParams(
                    max_tokens=rng.randrange(20, 80), ignore_eos=True, temperature=0.0
                )
                engine.add_request(prompt, params)
            engine.step()
        steps.extend(engine.stats.recent())
        engine.stats.clear()
        print(f"\r{i + 1}/{len(TARGET_BATCHES)} batch targets", end="", flush=True)
    while engine.has_unfinished():
        engine.step()
    steps.extend(engine.stats.recent())
    print(f"\n{len(steps)} steps in {time.monotonic() - start:.0f} s")

    model = StepTimeModel.from_steps(steps, window=len(steps) + 1)
    c = model.coefficients
    print(
        f"base {c.base_s * 1e3:.1f} ms, per decode {c.per_decode_s * 1e3:.3f} ms, per prompt "
        f"token {c.per_prefill_token_s * 1e3:.3f} ms, per KV token {c.per_kv_token_s * 1e6:.2f} "
        f"us, prefill step {c.prefill_step_s * 1e3:.1f} ms"
    )
    print(f"--step-cost {c.base_s:.4f},{c.per_decode_s:.6f},{c.per_prefill_token_s:.6f},"
          f"{c.per_kv_token_s:.2e},{c.prefill_step_s:.4f}")
    groups: dict[tuple[int, bool], list[float]] = defaultdict(list)
    for s in steps:
        bucket = next((b for b in BUCKETS if s.num_decode_tokens <= b), BUCKETS[-1])
        groups[(bucket, s.num_prefill_tokens > 0)].append(s.duration_s)
    print("decodes (up to) | steps decode-only | median ms | steps with prompt | median ms")
    for b in BUCKETS:
        alone, mixed = groups.get((b, False), []), groups.get((b, True), [])
        print(
            f"{b:>15} | {len(alone):>17} | {_ms(alone):>9} | {len(mixed):>17} | {_ms(mixed):>9}"
        )
    errors = [
        abs(model.predict(s.num_decode_tokens, s.num_prefill_tokens, s.num_kv_tokens_read)
            - s.duration_s) / s.duration_s
        for s in steps
    ]
    print(f"median relative error {statistics.median(errors):.0%}")


def _ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1e3:.1f}" if values else "-"


if __name__ == "__main__":
    main()
