"""The policy benchmark's load, simulated: same mix, lengths and arrivals, no model, no HTTP.

Requests carry the metadata the server would give them (tier, promise, price, sheddable), go
through the real scheduler and policy on a `SimulatedEngine`, and are scored as `bench serve`
scores them: a request attains its promise when its TTFT and decode speed meet its tier's, a
shed request is a miss, and revenue is each request priced at the tier it delivered. The step
cost comes from a fit of this machine's measured steps, so minutes of load take seconds.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from tokenfactory.bench.point_tally import PointTally
from tokenfactory.bench.serve.arrivals import arrival_gaps
from tokenfactory.bench.serve.lengths import LengthDist
from tokenfactory.bench.serve.tiers_info import parse_mix
from tokenfactory.engine.policy import make_policy
from tokenfactory.engine.sampling_params import SamplingParams
from tokenfactory.engine.sequence import FinishReason, Sequence
from tokenfactory.engine.simulator import SIM_STOP_AFTER, SimulatedEngine
from tokenfactory.engine.step_model import StepCoefficients
from tokenfactory.tiers import TierCatalog, decode_speed

# The embedded SmolLM2-135M on the 2-core reference VM: `scripts/step_cost_fit.py`
# (a staggered load, batches 1-48, prompt chunks up to 256 tokens, ~1,000 steps), the
# per-coefficient median of three fits, 2026-11-27 13:40 UTC, commit 4fc5f09 (Q4_1 decode):
# median error 9%. A step that computes any prompt token pays ~10 ms more than a decode-only
# one. The model is linear, so it cannot show that steps of 1-2 decodes are cheaper still
# (15-18 ms measured against ~21 ms predicted).
EMBEDDED_CPU_COST = StepCoefficients(
    base_s=0.020,
    per_decode_s=0.00058,
    per_prefill_token_s=0.000405,
    per_kv_token_s=1.7e-6,
    prefill_step_s=0.0101,
)

# The same model on the same VM before the Q4_1 decode path and the faster norms (fit of
# 2026-11-27 04:00 UTC): every step at least 31 ms, a prompt token 0.69 ms. A slower machine,
# where a paced super request leaves little room beside it; the policy tests' overload
# scenarios and `scripts/tier_config_sim.py --cost slower` use it.
SLOWER_CPU_COST = StepCoefficients(
    base_s=0.031,
    per_decode_s=0.000093,
    per_prefill_token_s=0.000685,
    per_kv_token_s=5.0e-6,
    prefill_step_s=0.0115,
)


@dataclass(frozen=True)
class SimLoad:
    rate: float  # requests per second (Poisson)
    duration_s: float
    mix: str
    input_len: str = "lognormal:160,0.6"
    output_len: str = "lognormal:48,0.5"
    seed: int = 0
    # Share of requests whose model stops by itself (end of sequence) before max_tokens, at a
    # uniformly drawn point; the policy plans with max_tokens, as under the engine. (In the
    # HTTP benchmark of 2026-11-27, 224 of 2,532 requests did, at a median 46% of max_tokens.)
    early_stop_share: float = 0.0


def simulate(policy: str, load: SimLoad, catalog: TierCatalog, **options: Any) -> dict:
    """Run `load` through `policy` and summarise it like `policy_compare.summarize`
    (options as `simulate_tally`)."""
    return simulate_tally(policy, load, catalog, **options).summary()


def simulate_pooled(
    policy: str, loads: Iterable[SimLoad], catalog: TierCatalog, **options: Any
) -> dict:
    """Run every load (e.g. one per arrival seed) through `policy` and summarise them pooled,
    as `bench policies --seeds` pools its HTTP runs (options as `simulate_tally`)."""
    tally: PointTally | None = None
    for load in loads:
        one = simulate_tally(policy, load, catalog, **options)
        tally = one if tally is None else tally.add(one)
    if tally is None:
        raise ValueError("no load to simulate")
    return tally.summary()


def simulate_tally(
    policy: str,
    load: SimLoad,
    catalog: TierCatalog,
    cost: StepCoefficients = EMBEDDED_CPU_COST,
    noise: float = 0.15,
    max_num_seqs: int = 64,
    **policy_args: Any,
) -> PointTally:
    """Run `load` through `policy`: what it measured, poolable with other runs."""
    engine = SimulatedEngine(
        make_policy(policy, **policy_args),
        cost,
        max_num_seqs=max_num_seqs,
        noise=noise,
        seed=load.seed,
    )
    rng = random.Random(load.seed)
    mix = parse_mix(load.mix)
    names, weights = list(mix), list(mix.values())
    ins, outs = LengthDist.parse(load.input_len, lo=1), LengthDist.parse(load.output_len, lo=1)
    gaps = arrival_gaps(load.rate, seed=load.seed)
    stops = random.Random(load.seed + 1)  # its own stream: the load is the same for any share
    t, i = 0.0, 0
    while True:
        t += next(gaps)
        if t >= load.duration_s:
            break
        engine.run_until(t)
        tier = catalog[rng.choices(names, weights)[0]]
        prompt = [1 + (i * 31 + k) % 997 for k in range(ins.sample(rng))]
        metadata = {**catalog.scheduling_terms(tier), "received_at": t}
        max_tokens = outs.sample(rng)
        if stops.random() < load.early_stop_share:
            metadata[SIM_STOP_AFTER] = stops.randint(1, max_tokens)
        seq = Sequence(f"r{i}", prompt, SamplingParams(max_tokens=max_tokens), metadata=metadata)
        engine.add(seq)
        i += 1
    engine.drain()
    return _summarize(engine, load, catalog)


def _summarize(engine: SimulatedEngine, load: SimLoad, catalog: TierCatalog) -> PointTally:
    tally = PointTally(rate=load.rate, duration_s=max(engine.now, load.duration_s), runs=1)
    asked = 0  # the same usage at the tiers asked
    for seq in engine.seqs.values():
        tier = catalog[seq.metadata["tier"]]
        if seq.finish_reason is FinishReason.SHED or seq.first_token_time is None:
            if seq.finish_reason is FinishReason.SHED:
                tally.errors["429"] += 1
            tally.request(tier.name, kept=False)
            continue
        ttft = seq.first_token_time - seq.metadata["received_at"]  # as the client sees it
        speed = decode_speed(seq.num_output_tokens, seq.first_token_time, seq.finished_time)
        tally.request(tier.name, tier.keeps_promise(ttft, speed), ttft)
        billed = catalog.delivered(tier.name, ttft, speed)
        tally.revenue_micro_usd += billed.cost_micro_usd(
            seq.num_prompt_tokens, 0, seq.num_output_tokens
        )
        asked += tier.cost_micro_usd(seq.num_prompt_tokens, 0, seq.num_output_tokens)
        tally.output_tokens += seq.num_output_tokens
    tally.asked_revenue_micro_usd = asked
    return tally
