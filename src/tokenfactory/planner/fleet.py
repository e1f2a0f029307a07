"""How many chips a demand needs: one pool per tier, each chip at its tier's frontier point,
each pool's per-chip load checked on the simulator until every paid tier keeps its target
share of promises."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from tokenfactory.planner.demand import Lengths
from tokenfactory.planner.frontier import Machine, Workload
from tokenfactory.planner.revenue import TierOffer
from tokenfactory.planner.validate import DERATINGS, SimCheck, paid_tiers, simulate_load
from tokenfactory.tiers import TierCatalog


@dataclass(frozen=True)
class Pool:
    tier: str
    demand_rps: float
    chips: int  # 0: no demand, or the promise is out of this chip's reach
    per_chip_rps: float
    scale: float  # of the model's capacity per chip the simulator accepted
    check: SimCheck | None  # one chip of the pool at its final load
    met: bool
    usd_per_hour: float  # the pool's earnings as simulated
    reachable: bool


@dataclass(frozen=True)
class FleetPlan:
    pools: tuple[Pool, ...]
    chips: int
    power_w: float
    usd_per_hour: float
    usd_per_hour_per_mw: float
    target: float

    @property
    def all_paid_met(self) -> bool:
        return all(p.met for p in self.pools if p.check is not None or not p.reachable)


def chips_for(demand_rps: float, capacity_rps: float) -> int:
    """Chips a pool needs to offer `demand_rps` at `capacity_rps` each (whole chips)."""
    if demand_rps <= 0:
        return 0
    return max(1, math.ceil(demand_rps / capacity_rps - 1e-9))


def plan_fleet(
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
) -> FleetPlan:
    paid = set(paid_tiers(catalog))
    pools = []
    for offer in tier_offers:
        want = demand.get(offer.tier, 0.0)
        if want <= 0 or offer.capacity_rps <= 0:
            pools.append(
                Pool(offer.tier, want, 0, 0.0, 0.0, None, want <= 0, 0.0, offer.capacity_rps > 0)
            )
            continue
        pools.append(
            _size_pool(
                machine, workload, lengths, catalog, offer, want, target if offer.tier in paid
                else 0.0, policy, duration_s, seeds, acceptance,
            )
        )
    chips = sum(p.chips for p in pools)
    usd = sum(p.usd_per_hour for p in pools)
    power = chips * machine.hardware.power_w
    return FleetPlan(tuple(pools), chips, power, usd, usd / (power / 1e6) if power else 0.0, target)


def _size_pool(
    machine: Machine,
    workload: Workload,
    lengths: Lengths,
    catalog: TierCatalog,
    offer: TierOffer,
    want: float,
    target: float,
    policy: str,
    duration_s: float,
    seeds: Sequence[int],
    acceptance: float | None,
) -> Pool:
    """Derate the per-chip load until one chip of the pool keeps the target, then size the
    pool; its chips share the demand evenly, a load no higher than the one accepted."""
    check = None
    scale = DERATINGS[0]
    for scale in DERATINGS:
        per_chip = min(want, offer.capacity_rps * scale)
        check = simulate_load(
            machine, workload, lengths, catalog, {offer.tier: per_chip}, policy, duration_s, seeds,
            acceptance,
        )
        if check.attainment.get(offer.tier, 1.0) >= target:
            break
    assert check is not None
    met = check.attainment.get(offer.tier, 1.0) >= target
    chips = chips_for(want, offer.capacity_rps * scale)
    per_chip = want / chips
    if per_chip < offer.capacity_rps * scale * 0.999:  # the even split is lighter: run it
        check = simulate_load(
            machine, workload, lengths, catalog, {offer.tier: per_chip}, policy, duration_s, seeds,
            acceptance,
        )
        met = check.attainment.get(offer.tier, 1.0) >= target
    return Pool(
        offer.tier, want, chips, per_chip, scale, check, met, chips * check.usd_per_hour, True
    )
