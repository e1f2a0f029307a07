"""The frontier: steady states over batch sizes, the Pareto front, tiers placed on it."""

from __future__ import annotations

import pytest

from tokenfactory.planner.frontier import (
    Machine,
    Point,
    Workload,
    batch_grid,
    frontier,
    pareto,
    place_tiers,
    revenue_per_s,
)
from tokenfactory.tiers import load_tiers

LOAD = Workload(input_tokens=100, output_tokens=100)


def _point(batch: int, per_user: float, total: float) -> Point:
    return Point(batch, 0, 0.01, 1.0, per_user, total, total * 2, total / 100)


def test_batch_grid_halves_between_powers_of_two_and_ends_at_the_limit():
    assert batch_grid(20) == [1, 2, 3, 4, 6, 8, 12, 16, 20]
    assert batch_grid(0) == []


def test_pareto_drops_points_beaten_on_both_axes():
    a, b, c = _point(1, 100, 100), _point(8, 50, 400), _point(9, 40, 300)  # c: slower, less
    assert pareto([c, a, b]) == [a, b]


def test_throughput_rises_and_speed_falls_with_batch(shape, chip):
    points = frontier(Machine(shape, chip), LOAD)
    speeds = [p.tokens_per_s_per_user for p in points]
    totals = [p.tokens_per_s for p in points]
    assert speeds == sorted(speeds, reverse=True) and totals == sorted(totals)
    assert points[0].batch == 1


def test_max_batch_is_what_fits_beside_the_weights(shape, chip):
    # (100 GB - 1 GB) x 0.9 / (200 tokens x 1 MB) = 445 sequences.
    assert Machine(shape, chip).max_batch(LOAD) == 445


def test_no_acceptance_means_drafts_never_help(shape, chip):
    m = Machine(shape, chip)
    plain = frontier(m, LOAD)
    drafted = frontier(m, LOAD, acceptance=0.0)
    assert [p.tokens_per_s for p in drafted] == pytest.approx([p.tokens_per_s for p in plain])
    assert all(p.draft_tokens == 0 for p in drafted)


def test_drafts_help_a_memory_bound_chip_when_most_are_accepted(shape, chip):
    m = Machine(shape, chip)
    one_plain = m.point(1, LOAD)
    one_drafted = m.point(1, LOAD, acceptance=0.9, k=4)
    # The weight read dominates a batch-1 step, so four extra rows cost little.
    assert one_drafted.tokens_per_s_per_user > 3 * one_plain.tokens_per_s_per_user


def test_each_tier_sits_at_the_most_throughput_that_keeps_its_promise():
    catalog = load_tiers(preset="gpu")  # promises 20, 50, 100, 250, 600 tokens/s
    points = [_point(1, 700, 700), _point(8, 300, 2400), _point(32, 120, 3840),
              _point(128, 60, 7680), _point(256, 25, 6400)]
    placed = {t.tier: t for t in place_tiers(points, catalog, LOAD, 1000.0)}
    assert placed["super"].point.batch == 1
    assert placed["ultra"].point.batch == 8
    assert placed["high"].point.batch == 32
    assert placed["standard"].point.batch == 128
    assert placed["free"].point.batch == 128  # 256 is slower and makes less
    # standard: 76.8 requests/s x (100 x $0.75 + 100 x $3) / 1M = $0.0288/s.
    assert placed["standard"].usd_per_hour == pytest.approx(3600 * 76.8 * 375e-6)
    assert revenue_per_s(catalog, "free", LOAD, 10.0) == 0.0


def test_a_promise_faster_than_any_point_is_out_of_reach():
    catalog = load_tiers(preset="gpu")
    placed = {t.tier: t for t in place_tiers([_point(1, 100, 100)], catalog, LOAD, 1.0)}
    assert placed["super"].point is None and placed["super"].usd_per_hour == 0.0
