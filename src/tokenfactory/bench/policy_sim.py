"""The policy benchmark's load, simulated: same mix, lengths and arrivals, no model, no HTTP.

Requests carry the terms the server would give them (tier, promise, price, sheddable), go
through the real scheduler and policy on a `SimulatedEngine`, and are scored as `bench serve`
scores them: a request attains its promise when its TTFT and decode speed meet its tier's, a
shed request is a miss, and revenue is each request priced at the tier it delivered. The step
cost comes from a fit of this machine's measured steps, so minutes of load take seconds.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Any

from tokenfactory.bench.point_tally import PointTally
from tokenfactory.bench.serve.arrivals import arrival_gaps
from tokenfactory.bench.serve.lengths import LengthDist
from tokenfactory.bench.serve.tiers_info import parse_mix
from tokenfactory.bench.serve.workloads import TierPicker
from tokenfactory.engine.sampling_params import SamplingParams
from tokenfactory.engine.sequence import FinishReason, Sequence
from tokenfactory.scheduling.calibration import step_cost
from tokenfactory.scheduling.policy import make_policy
from tokenfactory.scheduling.simulator import SimulatedEngine
from tokenfactory.scheduling.step_model import StepCoefficients
from tokenfactory.tiers import ServiceTerms, TierCatalog, decode_speed


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
    cost: StepCoefficients | None = None,
    noise: float = 0.15,
    max_num_seqs: int = 64,
    num_blocks: int = 4096,
    stall_share: float = 0.0,
    stall_s: float = 0.0,
    step_prior: StepCoefficients | None = None,
    max_draft_tokens: int = 0,
    acceptance: float = 0.5,
    **policy_args: Any,
) -> PointTally:
    """Run `load` through `policy`: what it measured, poolable with other runs.

    `stall_share` of the steps take `stall_s` longer (pauses that are not work);
    `step_prior` is what the hardware probe would tell the policy before any step; `cost`
    defaults to the embedded model on the reference VM (calibration "embedded-cpu");
    `max_draft_tokens` > 0 lets the policy speculate, each draft token accepted with chance
    `acceptance`."""
    scheduling = make_policy(policy, **policy_args)
    if step_prior is not None:
        scheduling.set_step_prior(step_prior)
    engine = SimulatedEngine(
        scheduling,
        cost or step_cost("embedded-cpu"),
        num_blocks=num_blocks,
        max_num_seqs=max_num_seqs,
        noise=noise,
        seed=load.seed,
        stall_share=stall_share,
        stall_s=stall_s,
        max_draft_tokens=max_draft_tokens,
        acceptance=acceptance,
    )
    for req in load_requests(load, catalog):
        engine.run_until(req.at_s)
        terms = replace(req.terms, received_at=req.at_s)
        params = SamplingParams(max_tokens=req.max_tokens)
        engine.add(Sequence(req.request_id, req.prompt, params, terms=terms), req.stop_after)
    engine.drain()
    served = [
        Served(
            tier=_terms(seq).tier,
            received_at=_terms(seq).received_at or 0.0,
            first_token_time=seq.first_token_time,
            finished_time=seq.finished_time,
            prompt_tokens=seq.num_prompt_tokens,
            output_tokens=seq.num_output_tokens,
            shed=seq.finish_reason is FinishReason.SHED,
        )
        for seq in engine.seqs.values()
    ]
    return tally_served(served, load.rate, max(engine.now, load.duration_s), catalog)


def _terms(seq: Sequence) -> ServiceTerms:
    assert seq.terms is not None, "every simulated request carries its tier's terms"
    return seq.terms


@dataclass(frozen=True)
class LoadRequest:
    """One request of a load: when it arrives (seconds from the start) and what it asks."""

    at_s: float
    request_id: str
    prompt: list[int]
    max_tokens: int
    terms: ServiceTerms  # what its tier sells, as the server gives it
    stop_after: int | None = None  # its model stops by itself after this many tokens


def load_requests(load: SimLoad, catalog: TierCatalog) -> Iterator[LoadRequest]:
    """The load's requests in arrival order: Poisson arrivals, the mix's tiers, the length
    distributions, distinct prompts; the same for any policy (and any early-stop share).
    Drawn as `bench serve`'s random workload draws them with the same seed (its arrival
    gaps, its lengths stream, its tier picker), so a simulated point is the twin of an HTTP
    one: the same requests at the same times."""
    rng = random.Random(load.seed)
    pick = TierPicker(parse_mix(load.mix), load.seed)
    ins, outs = LengthDist.parse(load.input_len, lo=4), LengthDist.parse(load.output_len, lo=1)
    gaps = arrival_gaps(load.rate, seed=load.seed)
    stops = random.Random(load.seed + 1)  # its own stream: the load is the same for any share
    t, i = 0.0, 0
    while True:
        t += next(gaps)
        if t >= load.duration_s:
            return
        n_in, max_tokens = ins.sample(rng), outs.sample(rng)
        tier_name = pick()
        assert tier_name is not None, "parse_mix gives at least one tier"
        tier = catalog[tier_name]
        prompt = [1 + (i * 31 + k) % 997 for k in range(n_in)]
        stop_after = None
        if stops.random() < load.early_stop_share:
            stop_after = stops.randint(1, max_tokens)
        yield LoadRequest(
            t, f"r{i}", prompt, max_tokens, catalog.service_terms(tier), stop_after
        )
        i += 1


@dataclass(frozen=True)
class Served:
    """How one request of a load went, on whatever engine served it (times on one clock)."""

    tier: str
    received_at: float
    first_token_time: float | None
    finished_time: float | None
    prompt_tokens: int
    output_tokens: int
    shed: bool = False  # refused on arrival (429)
    cut_off: bool = False  # still unfinished when the run's time ran out


def tally_served(
    served: Iterable[Served], rate: float, duration_s: float, catalog: TierCatalog
) -> PointTally:
    """Score requests as `bench serve` does: a request attains its promise when its TTFT (as
    the client sees it) and decode speed meet its tier's; a shed request, one without a first
    token and one cut off unfinished are misses (the last billed nothing); each other is
    billed at the tier it delivered (prompts at full price)."""
    tally = PointTally(rate=rate, duration_s=duration_s, runs=1)
    asked = 0  # the same usage at the tiers asked
    for r in served:
        tier = catalog[r.tier]
        if r.shed or r.cut_off or r.first_token_time is None:
            if r.shed:
                tally.errors["429"] += 1
            if r.cut_off:
                tally.errors["cut_off"] += 1
            tally.request(tier.name, kept=False)
            continue
        ttft = r.first_token_time - r.received_at
        speed = decode_speed(r.output_tokens, r.first_token_time, r.finished_time)
        tally.request(tier.name, tier.keeps_promise(ttft, speed), ttft)
        billed = catalog.delivered(tier.name, ttft, speed)
        tally.revenue_micro_usd += billed.cost_micro_usd(r.prompt_tokens, 0, r.output_tokens)
        asked += tier.cost_micro_usd(r.prompt_tokens, 0, r.output_tokens)
        tally.output_tokens += r.output_tokens
    tally.asked_revenue_micro_usd = asked
    return tally
