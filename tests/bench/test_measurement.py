"""The instrument against a server with a known pace: timings, concurrency, rate, errors."""

from __future__ import annotations

import statistics

import pytest

from tests.bench.conftest import fake_endpoint, run_load
from tokenfactory.bench.serve.metrics import summarize_run
from tokenfactory.bench.serve.runner import EndpointError, LoadPoint
from tokenfactory.bench.serve.workloads import WorkloadOptions

# the load generator against a paced HTTP server, on the wall clock
pytestmark = pytest.mark.integration


def test_ttft_itl_and_speed_match_a_known_pace():
    ttft, tps, n = 0.5, 40.0, 20  # one token every 25 ms after a 500 ms first-token delay
    with fake_endpoint(tokens_per_s=tps, ttft_s=ttft) as ep:
        wl = WorkloadOptions("random", input_len="16", output_len=str(n))
        res, catalog = run_load(ep.base, LoadPoint(max_concurrency=2), 6, wl)
    assert all(r.ok for r in res.records)
    s = summarize_run(res.records, res.duration_s, catalog, None)["overall"]
    # medians for TTFT and E2EL: robust to one late wake-up on a shared, loaded machine
    assert s["ttft_ms"]["p50"] == pytest.approx(ttft * 1000, rel=0.05)
    assert s["itl_ms"]["mean"] == pytest.approx(1000 / tps, rel=0.05)
    assert s["tpot_ms"]["mean"] == pytest.approx(1000 / tps, rel=0.05)
    assert s["decode_tokens_per_s"]["p50"] == pytest.approx(tps, rel=0.05)
    assert s["e2el_ms"]["p50"] == pytest.approx((ttft + (n - 1) / tps) * 1000, rel=0.05)
    assert s["tokens"]["output"] == 6 * n
    assert s["itl_ms"]["n"] == 6 * (n - 1)


def test_a_last_token_without_text_still_ends_the_decode_time():
    # An end-of-sequence token is counted in completion_tokens but carries no text: its chunk,
    # not the last one with text, is when the decode ended (else n=6 reads 12.5 tokens/s).
    tps, n = 10.0, 6
    with fake_endpoint(tokens_per_s=tps, last_token_without_text=True) as ep:
        wl = WorkloadOptions("random", input_len="16", output_len=str(n))
        res, catalog = run_load(ep.base, LoadPoint(max_concurrency=2), 4, wl)
    assert all(r.ok and r.chunks == n - 1 and r.output_tokens == n for r in res.records)
    assert {r.finish_reason for r in res.records} == {"stop"}
    s = summarize_run(res.records, res.duration_s, catalog, None)["overall"]
    assert s["decode_tokens_per_s"]["p50"] == pytest.approx(tps, rel=0.05)


def test_concurrency_cap_is_reached_and_never_exceeded():
    with fake_endpoint(tokens_per_s=100.0) as ep:
        res, _ = run_load(ep.base, LoadPoint(max_concurrency=4), 16)
        stats = ep.stats()
    assert len(res.records) == 16 and all(r.ok for r in res.records)
    assert stats["max_in_flight"] == 4


def test_request_rate_is_honoured(fast_endpoint):
    fast_endpoint.reset()
    # burstiness 200: gamma gaps with CV 0.07, so the observed rate is tight around 25/s
    res, _ = run_load(fast_endpoint.base, LoadPoint(request_rate=25.0), 26, burstiness=200.0)
    arrivals = fast_endpoint.stats()["arrivals"][1:]  # the first is the warm-up request
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:], strict=False)]
    assert len(gaps) == 25
    assert statistics.mean(gaps) == pytest.approx(0.04, rel=0.1)
    assert all(r.ok for r in res.records)


def test_errors_are_counted_by_kind_type_and_status():
    cycle = ["ok", "400", "500", "429", "midstream", "drop"]
    with fake_endpoint(tokens_per_s=0.0, errors=cycle) as ep:
        # no warm-up, so request i meets behaviour cycle[i % 6]
        res, catalog = run_load(ep.base, LoadPoint(max_concurrency=1), 12, warmup=False)
    s = summarize_run(res.records, res.duration_s, catalog, None)["overall"]
    assert s["requests"] == {"sent": 12, "completed": 2, "failed": 10}
    assert s["errors"]["by_kind"] == {"http": 6, "stream": 2, "connection": 2}
    assert s["errors"]["by_type"] == {
        "invalid_request_error": 2,
        "server_error": 4,  # two HTTP 500s and two mid-stream error events
        "rate_limit_exceeded": 2,
        "RemoteProtocolError": 2,
    }
    assert s["errors"]["by_status"] == {"400": 2, "500": 2, "429": 2, "200": 2}
    assert [r.retry_after for r in res.records if r.error_status == 429] == ["1", "1"]
    assert s["promise"]["attainment"] == pytest.approx(2 / 12)


def test_unreachable_endpoint_fails_clearly_or_counts_connection_errors():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    with pytest.raises(EndpointError):
        run_load(base, LoadPoint(max_concurrency=2), 3)
    res, _ = run_load(base, LoadPoint(max_concurrency=2), 3, warmup=False)
    assert [r.error_kind for r in res.records] == ["connection"] * 3


def test_chunks_count_tokens_when_usage_is_missing():
    with fake_endpoint(report_usage=False) as ep:
        wl = WorkloadOptions("random", input_len="16", output_len="12")
        res, _ = run_load(ep.base, LoadPoint(max_concurrency=2), 4, wl, endpoint="completions")
    assert all(r.ok and r.completion_tokens is None for r in res.records)
    assert [r.output_tokens for r in res.records] == [12] * 4


def test_duration_bounds_the_run(fast_endpoint):
    res, _ = run_load(fast_endpoint.base, LoadPoint(request_rate=20.0), 1000, duration_s=0.5)
    assert 3 <= len(res.records) <= 20
    assert res.duration_s < 2.0
