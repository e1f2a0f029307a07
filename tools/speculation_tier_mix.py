"""A batch of 64 requests with a tier mix (free 50%, standard 30%, super 20%) on the embedded
model, under the tier policy, without and with speculative decoding, runs alternated.

    python tools/speculation_tier_mix.py --super-speed 40 --no-shed --reps 2 --out mix.json

All requests arrive at once and decode greedily to `--tokens` tokens (EOS ignored) on the
agent workload's prompts. Reports, per run: output tokens per second in total (first step to
last finish) and each tier's mean decode speed per request (first token to last). The super
promise may be raised (`--super-speed`) to a speed one token per step of this batch cannot
give, which is what makes the tier policy spend drafts on it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import replace

from tokenfactory.bench.spec_workloads import load_workload
from tokenfactory.engine.config import EngineConfig
from tokenfactory.engine.engine import Engine
from tokenfactory.engine.sampling_params import SamplingParams
from tokenfactory.scheduling.calibration import step_cost
from tokenfactory.tiers import ServiceTerms, load_tiers

MIX = (("free", 0.5), ("standard", 0.3), ("super", 0.2))


def mix_terms(n: int, super_speed: float | None, shed: bool = True) -> list[ServiceTerms]:
    catalog = load_tiers(preset="cpu")
    out: list[ServiceTerms] = []
    for name, share in MIX:
        terms = catalog.service_terms(catalog[name])
        if not shed:
            terms = replace(terms, sheddable=False)
        if name == "super" and super_speed is not None:
            terms = replace(terms, promise=replace(terms.promise, tokens_per_s=super_speed))
        out += [terms] * round(n * share)
    return out[:n]


def run(engine: Engine, prompts: list[list[int]], terms: list[ServiceTerms], tokens: int) -> dict:
    params = SamplingParams(temperature=0.0, max_tokens=tokens, ignore_eos=True)
    engine.stats.clear()
    now = time.monotonic()
    tier_of: dict[str, str] = {}
    shed: dict[str, int] = {}
    for i, t in enumerate(terms):
        prompt = prompts[i % len(prompts)]
        rid = engine.add_request(prompt, params, terms=replace(t, received_at=now))
        tier_of[rid] = t.tier
    speeds: dict[str, list[float]] = {}
    start = time.monotonic()
    total = 0
    while engine.has_unfinished():
        for out in engine.step():
            total += len(out.token_ids)
            if out.finished and out.retry_after_s is not None:
                shed[tier_of[out.request_id]] = shed.get(tier_of[out.request_id], 0) + 1
            elif out.finished and out.first_token_time and out.finished_time:
                span = out.finished_time - out.first_token_time
                speeds.setdefault(tier_of[out.request_id], []).append(
                    (out.completion_tokens - 1) / span if span > 0 else 0.0
                )
    wall = time.monotonic() - start
    steps = engine.stats.recent()
    drafted = sum(s.num_draft_tokens for s in steps)
    accepted = sum(s.num_accepted_tokens for s in steps)
    return {
        "tokens_per_s": total / wall,
        "wall_s": wall,
        "steps": len(steps),
        "per_tier_tokens_per_s": {k: statistics.fmean(v) for k, v in speeds.items()},
        "shed": shed,
        "draft_tokens": drafted,
        "acceptance": accepted / drafted if drafted else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=96)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--super-speed", type=float, default=None)
    ap.add_argument("--workload", default="agent")
    ap.add_argument(
        "--no-shed", action="store_true",
        help="free requests wait instead of being refused: the whole batch runs",
    )
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    config = EngineConfig(policy="tier", max_num_seqs=max(64, args.batch), max_model_len=4096)
    plain = Engine.from_model_path(None, config)
    spec = Engine(plain.model, plain.tokenizer, replace(config, speculation="ngram"))
    for e in (plain, spec):
        e.set_step_prior(step_cost("embedded-cpu"))
    tok = plain.tokenizer
    assert tok is not None
    prompts = [tok.encode(plain.chat_prompt(p.messages)) for p in load_workload(args.workload)]
    terms = mix_terms(args.batch, args.super_speed, shed=not args.no_shed)
    results: dict[str, list[dict]] = {"plain": [], "speculation": []}
    for rep in range(args.reps):
        for name, engine in (("plain", plain), ("speculation", spec)):
            r = run(engine, prompts, terms, args.tokens)
            results[name].append(r)
            tiers = ", ".join(f"{k} {v:.1f}" for k, v in r["per_tier_tokens_per_s"].items())
            print(f"rep {rep} {name:<11} {r['tokens_per_s']:6.1f} tok/s total; per request: "
                  f"{tiers}; shed {r['shed']}; acceptance {r['acceptance']}")
    summary = {
        name: {
            "tokens_per_s": statistics.median(r["tokens_per_s"] for r in runs),
            # A tier may be missing from a run: its sheddable requests all refused.
            "per_tier_tokens_per_s": {
                t: statistics.median(
                    r["per_tier_tokens_per_s"][t] for r in runs if t in r["per_tier_tokens_per_s"]
                )
                for t in {t for r in runs for t in r["per_tier_tokens_per_s"]}
            },
        }
        for name, runs in results.items()
    }
    p, s = summary["plain"], summary["speculation"]
    print(f"total: {s['tokens_per_s'] / p['tokens_per_s']:.3f}x; super: "
          f"{s['per_tier_tokens_per_s']['super'] / p['per_tier_tokens_per_s']['super']:.2f}x")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"args": vars(args), "runs": results, "summary": summary}, f, indent=2)


if __name__ == "__main__":
    main()
