"""/dashboard/state on a real server after real requests: the same numbers as /metrics (and,
for money, as the ledger), every tier of /v1/tiers, the probe's points."""

from __future__ import annotations

import time
from collections import defaultdict

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.server.conftest import MODEL, ledger_rows

TIERS_USED = ("standard", "high", "super")


def _metrics(base_url: str) -> dict[str, dict[tuple, float]]:
    """Every sample of /metrics: name -> {sorted label pairs: value}."""
    out: dict[str, dict[tuple, float]] = defaultdict(dict)
    for family in text_string_to_metric_families(httpx.get(base_url + "/metrics").text):
        for s in family.samples:
            out[s.name][tuple(sorted(s.labels.items()))] = s.value
    return out


def _sum(samples: dict[tuple, float], **match: str) -> float:
    return sum(v for labels, v in samples.items() if match.items() <= dict(labels).items())


def _idle(base_url: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        engine = httpx.get(base_url + "/dashboard/state").json()["engine"]
        if engine["running"] == 0 and engine["waiting"] == 0:
            return
        time.sleep(0.2)
    raise AssertionError("the server did not go idle")


def test_the_state_is_the_metrics_numbers_after_requests(factory_server):
    base = factory_server.base_url
    httpx.get(base + "/dashboard/state").raise_for_status()  # a reading before the requests
    completion = 0
    for tier in TIERS_USED:
        r = factory_server.openai(tier).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Say hello."}], max_tokens=6
        )
        completion += r.usage.completion_tokens
    _idle(base)
    state = httpx.get(base + "/dashboard/state").json()
    m = _metrics(base)

    requests = m["tokenfactory_requests_total"]
    tokens = m["tokenfactory_completion_tokens_total"]
    revenue = m["tokenfactory_revenue_micro_usd_total"]
    assert state["totals"] == {
        "requests": _sum(requests),
        "prompt_tokens": _sum(m["tokenfactory_prompt_tokens_total"]),
        "completion_tokens": _sum(tokens),
        "revenue_micro_usd": _sum(revenue),
        "refused_429": sum(
            _sum(requests, outcome=o) for o in ("rate_limited", "insufficient_quota", "shed")
        ),
        "refused_503": sum(
            _sum(requests, outcome=o)
            for o in ("engine_unavailable", "ledger_unavailable", "overloaded")
        ),
    }
    for t in state["tiers"]:
        name = t["name"]
        assert t["totals"]["requests"] == _sum(requests, tier=name)
        assert t["totals"]["completion_tokens"] == _sum(tokens, tier=name)
        assert t["totals"]["revenue_micro_usd"] == _sum(revenue, tier=name)
        assert t["totals"]["promise_misses"] == _sum(
            m["tokenfactory_promise_misses_total"], tier=name
        )
    # Money: the metrics' revenue is the ledger's, to the micro-dollar.
    ledger = ledger_rows(factory_server.data_dir).values()
    assert state["totals"]["revenue_micro_usd"] == sum(r["amount_micro_usd"] for r in ledger)
    assert state["engine"]["kv_cache_usage"] == _sum(m["tokenfactory_kv_cache_usage"])
    assert state["engine"]["running"] == 0 and state["engine"]["healthy"] is True

    # Lately: the requests just made are in the window, each tier's under its own name.
    recent = state["recent"]
    assert recent["requests"] >= len(TIERS_USED)
    assert recent["completion_tokens"] >= completion > 0
    assert recent["completion_tokens_per_s"] > 0 and recent["revenue_micro_usd_per_s"] > 0
    assert recent["revenue_micro_usd_per_hour"] == recent["revenue_micro_usd_per_s"] * 3600
    by_name = {t["name"]: t for t in state["tiers"]}
    for name in TIERS_USED:
        lately = by_name[name]["recent"]
        assert lately["served"] >= 1
        assert 0 < lately["ttft_p50_s"] <= lately["ttft_p99_s"]
        assert lately["attainment"] is not None
    shares = [t["recent"]["token_share"] for t in state["tiers"]]
    assert abs(sum(shares) - 1) < 1e-9
    op = state["frontier"]["operating_point"]
    assert op["tokens_per_s"] == recent["completion_tokens_per_s"]


def test_the_state_shows_every_tier_and_the_probe_as_v1_tiers_does(factory_server):
    base = factory_server.base_url
    tiers = httpx.get(base + "/v1/tiers").json()
    state = httpx.get(base + "/dashboard/state").json()
    assert [(t["name"], t["open"]) for t in state["tiers"]] == [
        (t["name"], t["available"]) for t in tiers["data"]
    ]
    assert [
        (p["batch"], p["tokens_per_s_per_user"], p["tokens_per_s"])
        for p in state["frontier"]["points"]
    ] == [
        (p["batch"], p["tokens_per_s_per_user"], p["tokens_per_s"])
        for p in sorted(tiers["capacity"]["decode"], key=lambda p: p["batch"])
    ]
    page = httpx.get(base + "/dashboard")
    assert (
        page.status_code == 200
        and "dashboard/state" in httpx.get(base + "/dashboard/static/dashboard.js").text
    )
