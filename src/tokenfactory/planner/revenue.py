"""The tier mix that earns most: a linear program over how much of each tier's demand to take.

Each tier runs at its own frontier point (the most throughput that keeps its promise), where
a whole chip serves `capacity` requests/s of it. Taking x requests/s of a tier uses x /
capacity of a chip; the chips' time is the budget. Revenue is each request's price; a tiny
weight on served tokens sends spare capacity to the free tier rather than leaving it idle.
"""

from __future__ import annotations

from dataclasses import dataclass

from tokenfactory.planner.frontier import (
    Machine,
    Point,
    TierPlacement,
    Workload,
    frontier,
    place_tiers,
    revenue_per_s,
)
from tokenfactory.tiers import TierCatalog

_SPARE_WEIGHT = 1e-9  # $ per served request: breaks ties toward serving (free) work


@dataclass(frozen=True)
class TierOffer:
    """What one chip can do for one tier."""

    tier: str
    promise_tokens_per_s: float
    point: Point | None  # None: the chip cannot keep this tier's promise
    usd_per_request: float

    @property
    def capacity_rps(self) -> float:
        return 0.0 if self.point is None else self.point.requests_per_s


@dataclass(frozen=True)
class TierShare:
    tier: str
    demand_rps: float
    served_rps: float
    chip_share: float  # of all the chips' time
    usd_per_hour: float
    point: Point | None

    @property
    def promises_kept(self) -> float:
        """Share of the tier's requests that are served at its promise (the rest are not
        taken), as the plan predicts it."""
        return 1.0 if self.demand_rps <= 0 else self.served_rps / self.demand_rps


@dataclass(frozen=True)
class RevenuePlan:
    chips: float
    shares: tuple[TierShare, ...]
    usd_per_hour: float
    usd_per_hour_per_mw: float
    power_w: float


def offers(
    machine: Machine, load: Workload, catalog: TierCatalog, acceptance: float | None = None
) -> list[TierOffer]:
    """Each tier's best point, on the plain frontier or, with an acceptance rate, on the
    better of the plain and the speculative one."""
    curves = [frontier(machine, load)]
    if acceptance is not None:
        curves.append(frontier(machine, load, acceptance))
    best: dict[str, TierPlacement] = {}
    for points in curves:
        for placed in place_tiers(points, catalog, load, machine.hardware.power_w):
            old = best.get(placed.tier)
            if old is None or old.point is None or (
                placed.point is not None and placed.point.tokens_per_s > old.point.tokens_per_s
            ):
                best[placed.tier] = placed
    return [
        TierOffer(
            tier=t.name,
            promise_tokens_per_s=t.tokens_per_s,
            point=best[t.name].point,
            usd_per_request=revenue_per_s(catalog, t.name, load, 1.0),
        )
        for t in catalog.tiers
    ]


def best_mix(
    tier_offers: list[TierOffer],
    demand: dict[str, float],
    chips: float = 1.0,
    power_w: float = 0.0,
    mode: str = "shared",
    scale: float = 1.0,
) -> RevenuePlan:
    """The revenue-maximising requests/s per tier, within each tier's demand.

    `shared`: one engine per chip, one batch: every sequence of a step runs at the step's
    speed, so the fastest tier taken sets the batch, and its point's capacity is the budget
    of every tier taken (each tier as slow or slower). The program is solved once per
    fastest tier and the best kept.
    `pooled`: chips (or time slices) dedicated per tier, each at its own point: taking x of a
    tier uses x / its capacity of a chip.
    `scale` (0-1] derates every capacity: the headroom queueing needs."""
    if mode not in ("shared", "pooled"):
        raise ValueError(f"unknown capacity mode {mode!r}: shared or pooled")
    usable = [o for o in tier_offers if o.capacity_rps > 0]
    if not usable:
        raise ValueError("this hardware keeps no tier's promise for this model and lengths")
    if mode == "pooled":
        served = _solve(usable, demand, [1.0 / (o.capacity_rps * scale) for o in usable], chips)
        share = {o.tier: served[o.tier] / (o.capacity_rps * scale) / chips for o in usable}
        return _plan(tier_offers, demand, served, share, chips, power_w)
    best: RevenuePlan | None = None
    for fastest in usable:
        taken = [o for o in usable if o.promise_tokens_per_s <= fastest.promise_tokens_per_s]
        budget = fastest.capacity_rps * scale
        served = _solve(taken, demand, [1.0 / budget] * len(taken), chips)
        share = {o.tier: served[o.tier] / budget / chips for o in taken}
        # Every tier taken runs at the fastest one's point.
        points = {o.tier: fastest.point for o in taken}
        plan = _plan(tier_offers, demand, served, share, chips, power_w, points)
        if best is None or plan.usd_per_hour > best.usd_per_hour + 1e-12 or (
            abs(plan.usd_per_hour - best.usd_per_hour) <= 1e-12 and _served(plan) > _served(best)
        ):
            best = plan
    assert best is not None
    return best


def _served(plan: RevenuePlan) -> float:
    return sum(s.served_rps for s in plan.shares)


def _solve(
    taken: list[TierOffer], demand: dict[str, float], use: list[float], chips: float
) -> dict[str, float]:
    from scipy.optimize import linprog  # the plan extra

    price = [-(o.usd_per_request + _SPARE_WEIGHT) for o in taken]
    bounds = [(0.0, demand.get(o.tier, 0.0)) for o in taken]
    got = linprog(price, A_ub=[use], b_ub=[chips], bounds=bounds, method="highs")
    if not got.success:
        raise ValueError(f"the tier-mix program failed: {got.message}")
    return {o.tier: max(0.0, float(x)) for o, x in zip(taken, got.x, strict=True)}


def _plan(
    tier_offers: list[TierOffer],
    demand: dict[str, float],
    served: dict[str, float],
    share: dict[str, float],
    chips: float,
    power_w: float,
    points: dict[str, Point | None] | None = None,
) -> RevenuePlan:
    shares = []
    for o in tier_offers:
        x = served.get(o.tier, 0.0)
        shares.append(
            TierShare(
                tier=o.tier,
                demand_rps=demand.get(o.tier, 0.0),
                served_rps=x,
                chip_share=share.get(o.tier, 0.0),
                usd_per_hour=3600 * x * o.usd_per_request,
                point=(points or {}).get(o.tier, o.point),
            )
        )
    usd = sum(s.usd_per_hour for s in shares)
    mw = power_w * chips / 1e6
    return RevenuePlan(chips, tuple(shares), usd, usd / mw if mw else 0.0, power_w * chips)
