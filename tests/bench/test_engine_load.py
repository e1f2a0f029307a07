"""The policy benchmark's load on a real (tiny) engine, in process, on the wall clock."""

from __future__ import annotations

from dataclasses import replace

import pytest

from tests.engine.engine_fixtures import tiny_engine
from tokenfactory.bench.engine_load import per_tier_speeds, run_engine_load
from tokenfactory.bench.policy_sim import LoadRequest, Served, SimLoad, load_requests
from tokenfactory.tiers import load_tiers

pytestmark = pytest.mark.integration  # a whole load on a real (tiny) engine, on the wall clock

CATALOG = load_tiers(preset="cpu")


def _request(at_s: float, i: int, tier: str, max_tokens: int, stop_after: int | None = None):
    prompt = [1 + (i * 7 + k) % 500 for k in range(12)]
    terms = CATALOG.service_terms(CATALOG[tier])
    return LoadRequest(at_s, f"q{i}", prompt, max_tokens, terms, stop_after)


@pytest.mark.parametrize("policy", ["fcfs", "tier"])
def test_every_request_is_served_at_its_arrival_time_and_scored(policy):
    engine = tiny_engine(policy=policy, max_num_batched_tokens=64)
    load = SimLoad(rate=20, duration_s=1.0, mix="free=0.5,high=0.5", input_len="12",
                   output_len="6", seed=1)
    # The tiny model's vocabulary is 512 tokens.
    requests = [
        replace(r, prompt=[t % 500 + 1 for t in r.prompt]) for r in load_requests(load, CATALOG)
    ]
    result = run_engine_load(engine, requests, CATALOG, load.rate, load.duration_s)
    assert len(result.served) == len(requests) > 5
    assert sorted(r.tier for r in result.served) == sorted(r.terms.tier for r in requests)
    assert all(r.output_tokens == 6 and r.first_token_time is not None for r in result.served)
    # Received when due on the wall clock, first token after that.
    starts = sorted(r.received_at for r in result.served)
    assert starts[-1] - starts[0] == pytest.approx(requests[-1].at_s - requests[0].at_s, abs=0.05)
    assert all(r.first_token_time >= r.received_at for r in result.served)
    summary = result.summary()
    assert sum(summary["per_tier"][t]["requests"] for t in summary["per_tier"]) == len(requests)
    seconds = max(result.wall_s, load.duration_s)  # the load's length at least
    assert summary["output_tokens_per_s"] == pytest.approx(6 * len(requests) / seconds)
    assert result.steps > 0 and 0 < result.schedule_s_total < result.step_s_total
    assert not engine.has_unfinished()


def test_a_request_that_stops_by_itself_is_ended_there_and_billed_for_what_it_got():
    engine = tiny_engine(max_num_batched_tokens=64)
    requests = [_request(0.0, 0, "standard", 20, stop_after=5), _request(0.0, 1, "free", 8)]
    result = run_engine_load(engine, requests, CATALOG, rate=2, duration_s=0.1)
    tokens = {r.tier: r.output_tokens for r in result.served}
    assert tokens == {"standard": 5, "free": 8}
    assert not engine.has_unfinished()


def test_requests_still_running_at_the_limit_are_cut_off_and_count_as_misses():
    engine = tiny_engine(max_num_batched_tokens=64)
    requests = [_request(0.0, 0, "high", 900)]
    result = run_engine_load(engine, requests, CATALOG, rate=1, duration_s=0.05, drain_limit_s=0.3)
    (served,) = result.served
    assert served.cut_off and served.output_tokens == 0
    summary = result.summary()
    assert summary["attainment"]["high"] == 0.0
    assert summary["errors"] == {"cut_off": 1}
    assert summary["revenue_usd_per_s"] == 0.0
    assert not engine.has_unfinished()


def test_a_busy_engine_is_refused():
    engine = tiny_engine()
    engine.add_request([1, 2, 3], request_id="x")
    with pytest.raises(RuntimeError, match="idle"):
        run_engine_load(engine, [], CATALOG, rate=1, duration_s=1)


def test_per_tier_speeds_skip_requests_without_a_first_token():
    served = [
        Served("high", 0.0, 0.5, 1.5, 10, 11),  # 10 tokens/s after a 0.5 s TTFT
        Served("high", 0.0, 0.2, 0.7, 10, 11),  # 20 tokens/s
        Served("high", 0.0, None, None, 10, 0, shed=True),
    ]
    high = per_tier_speeds(served)["high"]
    assert high["requests"] == 3
    assert high["tokens_per_s_median"] == pytest.approx(15.0)
    assert high["tokens_per_s_min"] == pytest.approx(10.0)
    assert high["ttft_s_median"] == pytest.approx(0.35)
