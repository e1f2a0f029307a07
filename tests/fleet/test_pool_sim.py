"""Tier pools vs one mixed pool on simulated engines behind the fleet's router: a tiny case."""

from __future__ import annotations

import pytest

from tokenfactory.bench.policy_sim import SimLoad
from tokenfactory.fleet.pool_sim import FleetSim, compare, markdown, simulate_fleet, tier_pools
from tokenfactory.tiers import load_tiers

CATALOG = load_tiers(None, preset="gpu")
FLEET = FleetSim(engines=2, max_num_seqs=64, num_blocks=8192)
LOAD = SimLoad(8.0, 3.0, "standard=0.5,high=0.5", "lognormal:256,0.5", "lognormal:64,0.5")


def test_tier_pools_split_the_engines():
    pools = tier_pools(8, 2, ("high",), ("free", "standard"))
    assert pools == {"high": (0, 1), "free": (2, 3, 4, 5, 6, 7), "standard": (2, 3, 4, 5, 6, 7)}
    with pytest.raises(ValueError):
        tier_pools(2, 2, ("high",), ("free",))


def test_every_request_is_routed_once_and_scored():
    run = simulate_fleet("tier", LOAD, CATALOG, FLEET, {})
    sent = sum(run.tally.sent.values())
    assert sent == sum(run.routed) > 10
    assert all(n > 0 for n in run.routed)  # the router spreads distinct prompts
    assert run.tally.revenue_micro_usd > 0


def test_pools_keep_each_tier_on_its_engines():
    pools = tier_pools(2, 1, ("high",), ("standard",))
    run = simulate_fleet("tier", LOAD, CATALOG, FLEET, pools)
    assert run.routed == [run.tally.sent["high"], run.tally.sent["standard"]]


def test_compare_finds_the_capacity_and_runs_every_layout():
    lines: list[str] = []
    result = compare(CATALOG, FLEET, [2.0, 4.0], 1.5, [1], LOAD, log=lines.append)
    assert result["rate_100"] in (2.0, 4.0) and result["rate"] == result["rate_100"] * 1.5
    assert [(r["layout"], r["policy"]) for r in result["rows"]] == [
        ("mixed", "fcfs"), ("mixed", "tier"), ("high on 1, rest on 1", "tier")
    ]
    table = markdown(result, ("standard", "high"))
    assert table.count("\n") == 4 and "high on 1" in table


def test_the_command_refuses_a_pool_as_large_as_the_fleet():
    import typer
    from typer.testing import CliRunner

    from tokenfactory.fleet.pool_sim import main

    app = typer.Typer()
    app.command()(main)
    result = CliRunner().invoke(app, ["--engines", "2", "--high-pool", "2", "--sweep", "1"])
    assert result.exit_code == 2
    assert "1 to 1 of 2 engines" in result.output
