"""The dashboard's state from known metrics: per tier attainment, percentiles, refusals, the
tier mix, money per second and the operating point, on a real factory (tiny random-weight
engine, no requests) whose metrics the test fills as the factory's settlement would, with an
injected clock."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.engine.engine_fixtures import tiny_engine
from tokenfactory.billing import Billing
from tokenfactory.server.capacity import Capacity, CapacityPoint
from tokenfactory.server.dashboard.readings import ReadingWindow
from tokenfactory.server.dashboard.state import dashboard_state
from tokenfactory.server.factory import Factory, FactoryConfig
from tokenfactory.tiers import load_tiers

# One user gets 10 tokens/s here: under the cpu preset free, standard and high open
# (1, 4 and 8 tokens/s promised), ultra and super (15 and 25) are closed.
POINTS = [
    CapacityPoint(batch=1, step_s=0.1, tokens_per_s_per_user=10.0, tokens_per_s=10.0),
    CapacityPoint(batch=4, step_s=0.16, tokens_per_s_per_user=6.25, tokens_per_s=25.0),
]


def tiny_factory(data_dir: Path) -> Factory:
    catalog = load_tiers(None, "cpu")
    probe = Capacity("tiny", "cpu", "test machine", "2026-12-07T00:00:00+00:00", POINTS, 32, 0.5)
    billing = Billing.open(catalog, None, data_dir)
    engine = tiny_engine(max_num_seqs=8)
    return Factory(engine, catalog, billing, probe, FactoryConfig("tiny", data_dir))


class Clock:
    now = 50.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def factory(tmp_path):
    f = tiny_factory(tmp_path)
    yield f
    asyncio.run(f.shutdown())


def test_the_state_reads_each_tiers_service_and_money_from_the_metrics(factory):
    m, clock = factory.metrics, Clock()
    m.requests.labels("tiny", "high", "stop").inc(9)  # before the window: totals only
    window = ReadingWindow(m.registry, 30, clock, factory.refresh_gauges)
    clock.now += 20
    # high: four served, one of them late (billed at standard); tokens by the tier billed
    m.requests.labels("tiny", "high", "stop").inc(4)
    for ttft, speed in ((0.2, 9.0), (0.2, 9.5), (0.2, 10.0), (5.0, 2.0)):
        m.ttft.labels("tiny", "high").observe(ttft)
        m.decode_speed.labels("tiny", "high").observe(speed)
    m.promise_misses.labels("tiny", "high").inc()
    m.completion_tokens.labels("tiny", "high").inc(30)
    m.completion_tokens.labels("tiny", "standard").inc(10)
    m.revenue.labels("tiny", "high").inc(180)
    m.revenue.labels("tiny", "standard").inc(30)
    # refusals: 429 for shed, rate-limited and out of budget; 503 for a dead engine or ledger
    m.requests.labels("tiny", "free", "shed").inc(2)
    m.requests.labels("tiny", "standard", "rate_limited").inc()
    m.requests.labels("tiny", "standard", "insufficient_quota").inc()
    m.requests.labels("tiny", "high", "engine_unavailable").inc()
    m.requests.labels("tiny", "high", "ledger_unavailable").inc()

    state = dashboard_state(factory, window.change())
    tiers = {t["name"]: t for t in state["tiers"]}
    high = tiers["high"]["recent"]
    assert state["window_s"] == 20
    assert high["served"] == 4 and high["requests"] == 6
    assert high["attainment"] == 0.75
    assert high["tokens_per_s_mean"] == pytest.approx(7.625)
    assert 8 <= high["tokens_per_s_p50"] <= 15  # the (8, 15] bucket holds the median
    assert 0.1 <= high["ttft_p50_s"] <= 0.25 and 2 < high["ttft_p99_s"] <= 5
    assert (high["token_share"], tiers["standard"]["recent"]["token_share"]) == (0.75, 0.25)
    assert tiers["free"]["recent"]["token_share"] == 0.0
    assert tiers["free"]["recent"]["attainment"] is None  # none served: nothing to judge
    assert [tiers[n]["totals"]["refused_429"] for n in ("free", "standard", "high")] == [2, 2, 0]
    assert tiers["high"]["totals"]["refused_503"] == 2
    assert tiers["high"]["totals"]["requests"] == 9 + 4 + 2
    assert state["totals"]["refused_429"] == 4 and state["totals"]["refused_503"] == 2
    recent = state["recent"]
    assert recent["revenue_micro_usd"] == 210 and state["totals"]["revenue_micro_usd"] == 210
    assert recent["revenue_micro_usd_per_s"] == 10.5
    assert recent["revenue_micro_usd_per_hour"] == 10.5 * 3600
    assert recent["completion_tokens_per_s"] == 2.0
    assert recent["attainment"] == 0.75
    op = state["frontier"]["operating_point"]
    assert op == {"tokens_per_s_per_user": pytest.approx(7.625), "tokens_per_s": 2.0, "running": 0}
