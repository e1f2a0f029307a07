"""The official openai SDK against a real factory process: shapes, streaming, usage, tiers."""

from __future__ import annotations

import re

import httpx
import pytest

from tests.server.conftest import MODEL, ledger_rows

pytestmark = pytest.mark.slow

MSG = [{"role": "user", "content": "Name three colours."}]


def test_chat_completion(factory_server):
    client = factory_server.openai("super")
    r = client.chat.completions.create(
        model=MODEL, messages=MSG, max_tokens=12, temperature=0, service_tier="super"
    )
    assert r.object == "chat.completion"
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.completion_tokens <= 12
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert r.usage.prompt_tokens_details.cached_tokens >= 0
    assert r.service_tier in ("free", "standard", "high", "ultra", "super")
    row = ledger_rows(factory_server.data_dir)[r.id]
    assert row["completion_tokens"] == r.usage.completion_tokens
    assert row["prompt_tokens"] == r.usage.prompt_tokens
    assert row["tier_requested"] == "super" and row["tier_delivered"] == r.service_tier


def test_greedy_is_deterministic_and_stream_matches(factory_server):
    client = factory_server.openai("high")
    kw = dict(model=MODEL, messages=MSG, max_tokens=16, temperature=0)
    client.chat.completions.create(**kw)  # both below then reuse the same cached prefix
    whole = client.chat.completions.create(**kw)
    chunks = list(
        client.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True})
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finals) == 1
    assert finals[0].choices[0].finish_reason == whole.choices[0].finish_reason
    assert chunks[-1].usage is not None and not chunks[-1].choices
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert chunks[0].choices[0].delta.role == "assistant"


def test_stream_without_usage_has_no_usage_chunk(factory_server):
    client = factory_server.openai("standard")
    chunks = list(
        client.chat.completions.create(model=MODEL, messages=MSG, max_tokens=4, stream=True)
    )
    assert all(c.usage is None for c in chunks)


def test_text_completion_and_token_prompt(factory_server):
    client = factory_server.openai("standard")
    r = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=5,
                                  temperature=0)
    assert r.object == "text_completion" and r.choices[0].text
    ids = client.completions.create(model=MODEL, prompt=[504, 3575, 282], max_tokens=3)
    assert ids.usage.prompt_tokens == 3
    chunks = list(client.completions.create(
        model=MODEL, prompt="Once upon a time", max_tokens=6, stream=True,
        stream_options={"include_usage": True}))
    assert chunks[-1].usage.completion_tokens == 6 or chunks[-1].usage.completion_tokens < 6
    assert "".join(c.choices[0].text for c in chunks if c.choices)


def test_content_parts_tool_roles_and_logprobs(factory_server):
    client = factory_server.openai("high")
    r = client.chat.completions.create(
        model=MODEL,
        messages=[
            {"role": "system", "content": [{"type": "text", "text": "You are terse."}]},
            {"role": "user", "content": "What is 2+2?"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "c1", "type": "function",
                 "function": {"name": "calc", "arguments": "{\"x\": \"2+2\"}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "4"},
        ],
        max_tokens=5, logprobs=True, top_logprobs=3, temperature=0, seed=7,
        presence_penalty=0.1, frequency_penalty=0.1, stop=["\n\n"], user="u1",
        extra_body={"top_k": 20, "min_p": 0.01, "repetition_penalty": 1.05},
    )
    lp = r.choices[0].logprobs.content
    assert len(lp) == r.usage.completion_tokens
    assert all(len(t.top_logprobs) == 3 and t.logprob <= 0 for t in lp)


def test_service_tier_aliases_and_cached_tokens(factory_server):
    client = factory_server.openai("super")
    system = {"role": "system", "content": "You are a helpful assistant. " * 30}
    for alias, tier in [("default", "standard"), ("flex", "free"), ("priority", "high")]:
        r = client.chat.completions.create(
            model=MODEL, messages=[system, *MSG], max_tokens=3, service_tier=alias
        )
        row = ledger_rows(factory_server.data_dir)[r.id]
        assert row["tier_requested"] == tier
    # the long shared system prompt is served from the prefix cache the second time
    assert r.usage.prompt_tokens_details.cached_tokens >= 128


def test_models_tiers_health_metrics(factory_server):
    client = factory_server.openai("free")
    models = client.models.list()
    assert MODEL in [m.id for m in models.data]
    base = factory_server.base_url
    tiers = httpx.get(base + "/v1/tiers").json()
    assert [t["name"] for t in tiers["data"]] == ["free", "standard", "high", "ultra", "super"]
    assert all("available" in t and "reason" in t for t in tiers["data"])
    assert tiers["capacity"]["decode"][0]["batch"] == 1
    # the live step-time model, fitted to the steps served so far
    client.chat.completions.create(model=MODEL, messages=MSG, max_tokens=8)
    step = httpx.get(base + "/v1/tiers").json()["step_model"]
    assert step["fitted"] and step["steps_observed"] > 0
    assert step["prior"] == "probe"  # serve starts the model from its hardware probe
    assert step["base_s"] > 0 and step["policy"] in ("fcfs", "priority", "tier")
    assert step["prefill_step_s"] >= 0
    assert httpx.get(base + "/health").json() == {"status": "ok"}
    assert httpx.get(base + "/ready").status_code == 200
    metrics = httpx.get(base + "/metrics").text
    assert "tokenfactory_requests_total" in metrics
    assert "tokenfactory_revenue_micro_usd_total" in metrics
    # the start-up heap (model, tokenizer, web stack) is frozen, and collections are timed
    frozen = re.search(r"^tokenfactory_gc_frozen_objects (\S+)$", metrics, re.M)
    assert frozen and float(frozen.group(1)) > 50_000
    assert "tokenfactory_gc_pause_seconds_count" in metrics
    for raw in factory_server.keys.values():
        assert raw not in metrics


def test_usage_endpoint_matches_ledger(factory_server):
    client = factory_server.openai("ultra")
    r = client.chat.completions.create(model=MODEL, messages=MSG, max_tokens=4)
    usage = httpx.get(
        factory_server.base_url + "/v1/usage",
        headers={"Authorization": f"Bearer {factory_server.keys['ultra']}"},
    ).json()
    rows = [x for x in ledger_rows(factory_server.data_dir).values() if x["request_id"] == r.id]
    assert rows
    total = sum(d["completion_tokens"] for d in usage["data"])
    assert total >= r.usage.completion_tokens
    assert usage["total_micro_usd"] == sum(d["amount_micro_usd"] for d in usage["data"])
