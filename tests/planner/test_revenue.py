"""The tier-mix program on cases small enough to solve by hand, and the simulator's check."""

from __future__ import annotations

import pytest

from tokenfactory.planner.demand import DemandError, Lengths, parse_demand
from tokenfactory.planner.frontier import Machine, Point, Workload
from tokenfactory.planner.revenue import TierOffer, best_mix, offers
from tokenfactory.planner.validate import simulate_load, validated_mix
from tokenfactory.tiers import load_tiers


def _offer(tier: str, promise: float, capacity_rps: float, usd: float) -> TierOffer:
    point = Point(1, 0, 0.01, 1.0, promise * 1.1, capacity_rps * 100, 0.0, capacity_rps)
    return TierOffer(tier, promise, point, usd)


# standard: 10 requests/s on a whole chip at $1 each ($10 per chip-second); high: 5 requests/s
# at $3 each ($15 per chip-second).
OFFERS = [_offer("standard", 50, 10.0, 1.0), _offer("high", 100, 5.0, 3.0)]


def test_pooled_takes_the_dearest_per_chip_second_first():
    plan = best_mix(OFFERS, {"standard": 8, "high": 4}, mode="pooled")
    got = {s.tier: s.served_rps for s in plan.shares}
    # high: 4 requests/s use 0.8 of the chip; the 0.2 left serves 2 standard requests/s.
    assert got == pytest.approx({"standard": 2.0, "high": 4.0})
    assert plan.usd_per_hour == pytest.approx(3600 * (4 * 3 + 2 * 1))
    shares = {s.tier: s.chip_share for s in plan.shares}
    assert shares == pytest.approx({"standard": 0.2, "high": 0.8})


def test_shared_runs_every_tier_at_the_fastest_ones_batch():
    plan = best_mix(OFFERS, {"standard": 8, "high": 4}, mode="shared")
    got = {s.tier: s.served_rps for s in plan.shares}
    # With high on the chip the batch is high's: 5 requests/s in all, 4 high and 1 standard
    # ($13/s); standard alone would make $8/s.
    assert got == pytest.approx({"standard": 1.0, "high": 4.0})
    assert all(s.point == OFFERS[1].point for s in plan.shares if s.served_rps)


def test_shared_drops_the_fast_tier_when_its_batch_costs_more_than_it_brings():
    cheap_fast = [_offer("standard", 50, 10.0, 1.0), _offer("high", 100, 1.0, 1.5)]
    plan = best_mix(cheap_fast, {"standard": 10, "high": 1}, mode="shared")
    got = {s.tier: s.served_rps for s in plan.shares}
    assert got == pytest.approx({"standard": 10.0, "high": 0.0})  # $10/s against $1.5/s


def test_derating_and_a_demand_below_capacity():
    plan = best_mix(OFFERS, {"standard": 1, "high": 1}, mode="pooled", scale=0.5)
    # 1/5 + 1/2.5 = 0.6 of the chip: every request taken.
    assert {s.tier: s.served_rps for s in plan.shares} == pytest.approx(
        {"standard": 1.0, "high": 1.0}
    )
    assert {s.tier: s.promises_kept for s in plan.shares} == {"standard": 1.0, "high": 1.0}


def test_no_reachable_tier_is_a_clear_error():
    nothing = [TierOffer("super", 600, None, 1.0)]
    with pytest.raises(ValueError, match="keeps no tier"):
        best_mix(nothing, {"super": 1})


def test_demand_parsing_names_the_problem():
    catalog = load_tiers(preset="gpu")
    assert parse_demand("free=2, standard=1", catalog) == {"free": 2.0, "standard": 1.0}
    for text, message in [
        ("gold=1", "unknown tier 'gold'"),
        ("free", "use TIER=REQUESTS_PER_S"),
        ("free=x", "not a number"),
        ("free=-1", ">= 0"),
        ("free=0", "asks for nothing"),
        ("free=1,free=2", "twice"),
    ]:
        with pytest.raises(DemandError, match=message):
            parse_demand(text, catalog)


def test_the_simulator_keeps_a_light_plan_and_misses_an_overload(shape, slow_chip):
    catalog = load_tiers(preset="cpu")
    lengths = Lengths("100", "40")
    load = lengths.workload(2048)
    machine = Machine(shape, slow_chip)
    tier_offers = offers(machine, load, catalog)
    high = next(o for o in tier_offers if o.tier == "high")
    assert high.capacity_rps > 0
    light = simulate_load(machine, load, lengths, catalog, {"high": 0.3 * high.capacity_rps},
                          duration_s=20)
    heavy = simulate_load(machine, load, lengths, catalog, {"high": 2 * high.capacity_rps},
                          duration_s=20)
    assert light.attainment["high"] >= 0.99
    assert heavy.attainment["high"] < light.attainment["high"]


def test_validated_mix_derates_until_the_simulator_agrees(shape, slow_chip):
    catalog = load_tiers(preset="cpu")
    lengths = Lengths("100", "40")
    load: Workload = lengths.workload(2048)
    machine = Machine(shape, slow_chip)
    tier_offers = offers(machine, load, catalog)
    got = validated_mix(machine, load, lengths, catalog, tier_offers,
                        {"standard": 100.0, "high": 100.0}, duration_s=20)
    assert got.met
    assert got.check.attainment.get("high", 1.0) >= 0.99
    assert got.check.attainment.get("standard", 1.0) >= 0.99
    assert got.plan.usd_per_hour <= got.first.usd_per_hour
