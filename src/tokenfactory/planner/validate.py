"""A plan checked on the real scheduler and policies: the project's simulator
(bench/policy_sim.py) runs the plan's load on one chip whose steps take what the planner's
model says, and scores each request as `bench serve` would."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tokenfactory.bench.policy_sim import SimLoad, simulate_pooled
from tokenfactory.planner.demand import Lengths
from tokenfactory.planner.frontier import KV_MEMORY_SHARE, MAX_DRAFT, Machine, Workload
from tokenfactory.planner.revenue import RevenuePlan, TierOffer, best_mix
from tokenfactory.planner.step_costs import LinearFit, linear_step_costs
from tokenfactory.tiers import TierCatalog

BLOCK_SIZE = 16  # the simulator's KV block


@dataclass(frozen=True)
class SimCheck:
    policy: str
    rate_rps: float
    mix: str
    duration_s: float
    seeds: tuple[int, ...]
    attainment: dict[str, float]  # share of each tier's requests that kept its promise
    usd_per_hour: float
    output_tokens_per_s: float
    errors: dict[str, int]
    step_fit: LinearFit


def kv_blocks(machine: Machine) -> int:
    room = machine.hardware.memory_gb * 1e9 - machine.shape.weight_bytes
    tokens = KV_MEMORY_SHARE * room / machine.shape.kv_bytes_per_token
    return max(1, int(tokens // BLOCK_SIZE))


def simulate_load(
    machine: Machine,
    workload: Workload,
    lengths: Lengths,
    catalog: TierCatalog,
    rates: dict[str, float],
    policy: str = "tier",
    duration_s: float = 60.0,
    seeds: Sequence[int] = (0,),
    acceptance: float | None = None,
) -> SimCheck:
    """Run `rates` (requests/s per tier) through `policy` on one simulated chip (speculating,
    with an acceptance rate)."""
    total = sum(rates.values())
    if total <= 0:
        raise ValueError("nothing to simulate: every rate is zero")
    mix = ",".join(f"{t}={r / total:.6g}" for t, r in rates.items() if r > 0)
    return simulate_mix(
        machine, workload, lengths, catalog, total, mix, policy, duration_s, seeds,
        acceptance=acceptance,
    )


def simulate_mix(
    machine: Machine,
    workload: Workload,
    lengths: Lengths,
    catalog: TierCatalog,
    rate: float,
    mix: str,
    policy: str = "tier",
    duration_s: float = 60.0,
    seeds: Sequence[int] = (0,),
    max_num_seqs: int | None = None,
    acceptance: float | None = None,
) -> SimCheck:
    """Run `rate` requests/s of the tier `mix` (as `bench policies` writes it, so the same
    seeds draw the same requests) through `policy` on one simulated chip of at most
    `max_num_seqs` sequences a step (default: as many as its memory holds); with an
    `acceptance` rate the policy may verify up to MAX_DRAFT draft tokens a request a step."""
    max_seqs = max_num_seqs or max(1, machine.max_batch(workload))
    fit = linear_step_costs(machine, workload, max_seqs)
    loads = [
        SimLoad(
            rate=rate,
            duration_s=duration_s,
            mix=mix,
            input_len=lengths.input_len,
            output_len=lengths.output_len,
            seed=seed,
        )
        for seed in seeds
    ]
    summary = simulate_pooled(
        policy,
        loads,
        catalog,
        cost=fit.cost,
        step_prior=fit.cost,
        max_num_seqs=max_seqs,
        num_blocks=kv_blocks(machine),
        max_draft_tokens=0 if acceptance is None else MAX_DRAFT,
        acceptance=0.5 if acceptance is None else acceptance,
    )
    return SimCheck(
        policy=policy,
        rate_rps=rate,
        mix=mix,
        duration_s=duration_s,
        seeds=tuple(seeds),
        attainment=dict(summary["attainment"]),
        usd_per_hour=3600 * summary["revenue_usd_per_s"],
        output_tokens_per_s=summary["output_tokens_per_s"],
        errors=dict(summary["errors"]),
        step_fit=fit,
    )


def paid_tiers(catalog: TierCatalog) -> list[str]:
    return [t.name for t in catalog.tiers if t.output_price > 0 or t.input_price > 0]


def promises_met(check: SimCheck, tiers: Sequence[str], target: float) -> bool:
    """Every listed tier that was sent requests kept at least `target` of its promises."""
    return all(check.attainment.get(t, 1.0) >= target for t in tiers)


@dataclass(frozen=True)
class Validated:
    plan: RevenuePlan  # the plan at the capacity the simulator accepted
    check: SimCheck
    scale: float  # capacity derating it needed (1: none)
    met: bool  # False: even the smallest derating tried missed the target
    first: RevenuePlan  # the plan before any derating
    first_check: SimCheck


DERATINGS = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2)


def validated_mix(
    machine: Machine,
    workload: Workload,
    lengths: Lengths,
    catalog: TierCatalog,
    tier_offers: list[TierOffer],
    demand: dict[str, float],
    target: float = 0.99,
    policy: str = "tier",
    duration_s: float = 60.0,
    seeds: Sequence[int] = (0,),
    acceptance: float | None = None,
) -> Validated:
    """The best one-chip mix whose simulated run keeps `target` of every paid tier's
    promises taken: the program's plan, derated step by step until the simulator agrees."""
    paid = paid_tiers(catalog)
    first: tuple[RevenuePlan, SimCheck] | None = None
    for scale in DERATINGS:
        plan = best_mix(tier_offers, demand, 1.0, machine.hardware.power_w, "shared", scale)
        rates = {s.tier: s.served_rps for s in plan.shares if s.served_rps > 0}
        check = simulate_load(
            machine, workload, lengths, catalog, rates, policy, duration_s, seeds, acceptance
        )
        if first is None:
            first = (plan, check)
        if promises_met(check, paid, target):
            return Validated(plan, check, scale, True, *first)
    assert first is not None
    return Validated(plan, check, scale, False, *first)
