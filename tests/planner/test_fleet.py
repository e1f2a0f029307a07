"""Fleet sizing: whole chips per tier pool, more demand never fewer chips."""

from __future__ import annotations

from tokenfactory.planner.demand import Lengths
from tokenfactory.planner.fleet import chips_for, plan_fleet
from tokenfactory.planner.frontier import Machine
from tokenfactory.planner.revenue import offers
from tokenfactory.tiers import load_tiers


def test_chips_for_rounds_up_and_grows_with_demand():
    assert chips_for(0, 10) == 0
    assert chips_for(10, 10) == 1
    assert chips_for(10.5, 10) == 2
    counts = [chips_for(d / 4, 3.3) for d in range(200)]
    assert counts == sorted(counts)


def test_a_fleet_grows_with_demand_and_keeps_paid_promises(shape, slow_chip):
    catalog = load_tiers(preset="cpu")
    lengths = Lengths("100", "40")
    load = lengths.workload(2048)
    machine = Machine(shape, slow_chip)
    tier_offers = offers(machine, load, catalog)
    per_chip = next(o for o in tier_offers if o.tier == "high").capacity_rps

    def fleet(factor: float):
        demand = {"standard": factor * per_chip, "high": factor * per_chip}
        return plan_fleet(machine, load, lengths, catalog, tier_offers, demand, duration_s=20)

    small, big = fleet(0.5), fleet(2.0)
    assert 1 <= small.chips <= big.chips
    for plan in (small, big):
        pools = {p.tier: p for p in plan.pools}
        assert pools["high"].met and pools["standard"].met
        assert pools["free"].chips == 0  # no free demand, no free pool
    assert big.usd_per_hour > small.usd_per_hour
