"""The dashboard's readings of the metrics registry: totals, differences over a window, and
percentiles from histogram buckets (no model, an injected clock)."""

from __future__ import annotations

import math

import pytest

from tokenfactory.server.dashboard.readings import ReadingWindow, bucket_quantile
from tokenfactory.server.metrics import FactoryMetrics

INF = math.inf


def test_a_quantile_interpolates_inside_its_bucket_as_prometheus_does():
    # 10 observations: 4 in (0, 1], 4 in (1, 2], 2 in (2, 5]
    cumulative = {1.0: 4, 2.0: 8, 5.0: 10, INF: 10}
    assert bucket_quantile(0.5, cumulative) == pytest.approx(1.25)  # rank 5: 1 of 4 into (1, 2]
    assert bucket_quantile(0.2, cumulative) == pytest.approx(0.5)  # rank 2 of 4 in (0, 1]
    assert bucket_quantile(0.9, cumulative) == pytest.approx(3.5)  # rank 9: half into (2, 5]
    assert bucket_quantile(1.0, cumulative) == pytest.approx(5.0)


def test_a_quantile_beyond_the_last_bound_is_that_bound_and_none_without_observations():
    assert bucket_quantile(0.99, {1.0: 1, 2.0: 1, INF: 5}) == 2.0
    assert bucket_quantile(0.5, {1.0: 0, INF: 0}) is None
    assert bucket_quantile(0.5, {}) is None


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _served(m: FactoryMetrics, tier: str, ttft_s: float, tokens: int, missed: bool = False):
    m.requests.labels("m", tier, "stop").inc()
    m.ttft.labels("m", tier).observe(ttft_s)
    m.completion_tokens.labels("m", tier).inc(tokens)
    m.revenue.labels("m", tier).inc(tokens * 3)
    if missed:
        m.promise_misses.labels("m", tier).inc()


def test_a_change_holds_what_happened_since_the_reading_a_window_ago():
    m, clock = FactoryMetrics(), Clock()
    _served(m, "high", 0.3, 10)  # before the window's first reading: in totals only
    window = ReadingWindow(m.registry, window_s=30, clock=clock)
    clock.now += 10
    _served(m, "high", 0.3, 20)
    _served(m, "high", 1.5, 40, missed=True)
    _served(m, "free", 4.0, 5)
    change = window.change()
    assert change.span_s == 10
    assert change.after.total("tokenfactory_completion_tokens_total") == 75
    assert change.delta("tokenfactory_completion_tokens_total") == 65
    assert change.delta("tokenfactory_completion_tokens_total", tier="high") == 60
    assert change.rate("tokenfactory_revenue_micro_usd_total") == pytest.approx(65 * 3 / 10)
    assert change.delta("tokenfactory_promise_misses_total", tier="high") == 1
    # high's two first tokens lately: 0.3 s in (0.25, 0.5], 1.5 s in (1, 2]
    p50 = change.quantile("tokenfactory_time_to_first_token_seconds", 0.5, tier="high")
    assert 0.25 < p50 <= 0.5
    assert change.mean("tokenfactory_time_to_first_token_seconds", tier="high") == 0.9
    assert change.quantile("tokenfactory_time_to_first_token_seconds", 0.5, tier="ultra") is None


def test_the_window_slides_and_keeps_one_reading_at_its_start():
    m, clock = FactoryMetrics(), Clock()
    window = ReadingWindow(m.registry, window_s=30, clock=clock)
    for _ in range(8):  # a poll every 10 s, one request between polls
        clock.now += 10
        _served(m, "standard", 0.1, 1)
        change = window.change()
    assert change.span_s == 30  # the reading 30 s ago, not the first one 80 s ago
    assert change.delta("tokenfactory_requests_total") == 3
    assert change.after.total("tokenfactory_requests_total") == 8


def test_the_first_change_spans_from_construction_and_an_idle_one_spans_nothing_new():
    m, clock = FactoryMetrics(), Clock()
    window = ReadingWindow(m.registry, window_s=30, clock=clock)
    assert window.change().span_s == 0
    assert window.change().rate("tokenfactory_requests_total") is None
    clock.now += 100  # nobody polled for a while: the change says how long it spans
    assert window.change().span_s == 100


def test_polls_closer_than_half_a_second_add_no_reading():
    m, clock = FactoryMetrics(), Clock()
    window = ReadingWindow(m.registry, window_s=30, clock=clock)
    for _ in range(100):
        clock.now += 0.1
        window.change()
    assert len(window._readings) == 21  # the first, then one per half second


def test_gauges_are_refreshed_before_each_reading():
    m, clock = FactoryMetrics(), Clock()
    running = iter(range(1, 10))
    window = ReadingWindow(m.registry, clock=clock, refresh=lambda: m.running.set(next(running)))
    assert window.change().after.total("tokenfactory_running_requests") == 2
