"""Tiers: promises and prices from /v1/tiers or the command line, keys per tier, revenue."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.bench.conftest import fake_endpoint, run_load
from tokenfactory.bench.serve.metrics import Slo, summarize_run
from tokenfactory.bench.serve.runner import LoadPoint
from tokenfactory.bench.serve.tiers_info import (
    KeyRing,
    apply_overrides,
    fetch_catalog,
    parse_mix,
)
from tokenfactory.bench.serve.workloads import WorkloadOptions
from tokenfactory.tiers import load_tiers


def test_catalog_from_endpoint_then_file_then_overrides(fast_endpoint):
    with httpx.Client() as c:
        cat = fetch_catalog(c, fast_endpoint.base, "gpu", None)
        assert cat.source.endswith("/v1/tiers") and cat.preset == "cpu"
        assert cat["super"].tokens_per_s == 25 and cat["super"].output_price == 150_000_000
        missing = fetch_catalog(c, fast_endpoint.base + "/nothing", "gpu", None)
    assert missing.source == "built-in" and missing["super"].tokens_per_s == 600
    cat = apply_overrides(missing, ["super=30:0.8", "gold=5:9"], ["super=1:0.1:2.5"])
    assert (cat["super"].tokens_per_s, cat["super"].ttft_s) == (30, 0.8)
    assert (cat["super"].input_price, cat["super"].output_price) == (1_000_000, 2_500_000)
    assert cat["gold"].rank == 5 and cat.names[-1] == "gold"
    with pytest.raises(ValueError):
        apply_overrides(missing, ["super=fast"], [])
    assert parse_mix("free=1,super=3") == {"free": 0.25, "super": 0.75}


def test_key_for_a_tier_is_its_own_or_the_next_faster(tmp_path):
    cat = load_tiers(preset="cpu")
    path = tmp_path / "keys.json"
    path.write_text(json.dumps({"standard": "k-std", "ultra": "k-ultra"}))
    ring = KeyRing.build(None, str(path), "http://127.0.0.1:1")
    assert ring.key_for("standard", cat) == "k-std"
    assert ring.key_for("free", cat) == "k-std"
    assert ring.key_for("high", cat) == "k-ultra"
    assert ring.key_for("super", cat) is None
    assert ring.key_for(None, cat) == "k-std"  # the default tier's key
    assert KeyRing.build("k", None, "http://example.com").key_for("super", cat) == "k"


def test_tier_mix_keys_attainment_and_revenue(tmp_path):
    # super is promised 25 tokens/s but gets 10; standard (4 tokens/s) gets 100.
    pace = {"super": [10.0, 0.0], "standard": [100.0, 0.0]}
    with fake_endpoint(tier_pace=pace) as ep:
        keys_file = tmp_path / "keys.json"
        keys_file.write_text(json.dumps({"standard": "k-std", "super": "k-super"}))
        keys = KeyRing.build(None, str(keys_file), ep.base)
        wl = WorkloadOptions(
            "random", input_len="20", output_len="6", tier_mix={"standard": 0.5, "super": 0.5}
        )
        res, catalog = run_load(ep.base, LoadPoint(max_concurrency=8), 16, wl, keys)
        stats = ep.stats()
    bodies, auth = stats["bodies"][1:], stats["auth"][1:]  # skip the warm-up
    for body, header in zip(bodies, auth, strict=True):
        assert body["service_tier"] in ("standard", "super")
        assert header == f"Bearer k-{'std' if body['service_tier'] == 'standard' else 'super'}"
        assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    summary = summarize_run(res.records, res.duration_s, catalog, None)
    tiers = summary["tiers"]
    assert tiers["standard"]["promise"]["attainment"] == 1.0
    assert tiers["standard"]["promise"]["tier_promise_kept"] is True
    assert tiers["super"]["promise"]["attainment"] == 0.0
    assert tiers["super"]["decode_tokens_per_s"]["p50"] == pytest.approx(10, rel=0.05)
    n_std = tiers["standard"]["requests"]["sent"]
    assert summary["overall"]["goodput_requests_per_s"] == pytest.approx(n_std / res.duration_s)
    # revenue: each request's usage priced at its delivered tier, rounded up per request
    expected = 0
    for r in res.records:
        t = catalog[r.delivered_tier]
        expected += -(-(r.prompt_tokens * t.input_price + 6 * t.output_price) // 1_000_000)
    assert summary["overall"]["revenue"]["micro_usd"] == expected > 0
    assert sum(s["revenue"]["micro_usd"] for s in tiers.values()) == expected
    # beside it, the same usage at the tiers asked (this endpoint reports those as delivered)
    assert summary["overall"]["revenue"]["at_tier_asked_micro_usd"] == expected
    # DistServe goodput with explicit SLOs instead of the tier promises
    loose = summarize_run(res.records, res.duration_s, catalog, Slo.parse(["tpot:1000"]))
    assert loose["overall"]["goodput_requests_per_s"] == pytest.approx(16 / res.duration_s)


def test_delivered_tier_is_taken_from_the_last_chunk():
    with fake_endpoint(delivered_tier="free") as ep:
        wl = WorkloadOptions("random", output_len="4", tier_mix={"super": 1.0})
        res, catalog = run_load(ep.base, LoadPoint(max_concurrency=2), 4, wl)
    assert {r.delivered_tier for r in res.records} == {"free"}
    s = summarize_run(res.records, res.duration_s, catalog, None)
    assert s["tiers"]["super"]["delivered_tiers"] == {"free": 4}
    assert s["overall"]["revenue"]["micro_usd"] == 0  # free is free
    asked = sum(
        -(-(r.prompt_tokens * catalog["super"].input_price
            + r.output_tokens * catalog["super"].output_price) // 1_000_000)
        for r in res.records
    )
    assert s["overall"]["revenue"]["at_tier_asked_micro_usd"] == asked > 0


def test_agent_run_reports_cached_share(fast_endpoint):
    fast_endpoint.reset()
    wl = WorkloadOptions(
        "agent",
        agent_system_tokens=300,
        agent_turns=2,
        agent_steps=2,
        agent_think_time_s=0.0,
        agent_tool_latency_s=0.0,
        output_len="8",
    )
    res, catalog = run_load(fast_endpoint.base, LoadPoint(max_concurrency=4), 12, wl)
    assert len(res.records) == 12 and all(r.ok for r in res.records)
    assert len({r.session for r in res.records}) == 4  # one session per concurrent user
    s = summarize_run(res.records, res.duration_s, catalog, None)["overall"]
    assert s["tokens"]["cached_share"] > 0.5
    keys = {b.get("prompt_cache_key") for b in fast_endpoint.stats()["bodies"][1:]}
    assert keys == {r.session for r in res.records}
