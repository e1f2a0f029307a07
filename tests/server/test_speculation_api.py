"""Speculative decoding through a real factory process and the official openai SDK: the same
text as without it, streamed or not, usage and ledger exact, and /v1/tiers telling about it."""

from __future__ import annotations

import httpx
import pytest

from tests.server.conftest import MODEL, assert_same_chat, start_server

pytestmark = pytest.mark.slow

TEXT = (
    "def total(items):\n    s = 0\n    for item in items:\n        s += item.price * item.qty\n"
    "    return s\n"
)
COPY = [{"role": "user", "content": f"Repeat this code exactly:\n\n{TEXT}"}]


@pytest.fixture(scope="module")
def spec_server(tmp_path_factory):
    server = start_server(tmp_path_factory.mktemp("spec"), "--speculation", "ngram")
    yield server
    server.stop()


def test_same_text_stream_and_usage_as_without_speculation(spec_server, plain_server):
    kw = dict(model=MODEL, messages=COPY, max_tokens=60, temperature=0)
    assert_same_chat(spec_server, plain_server, "super", **kw)
    client = spec_server.openai("super")
    # A stop string inside what a draft covers ends the text exactly where it would.
    stop = dict(kw, stop=["item.qty"])
    a = plain_server.openai("super").chat.completions.create(**stop)
    b = client.chat.completions.create(**stop)
    assert b.choices[0].message.content == a.choices[0].message.content
    assert "item.qty" not in b.choices[0].message.content
    assert b.usage.completion_tokens == a.usage.completion_tokens


def test_tiers_say_how_speculation_is_used(spec_server):
    client = spec_server.openai("super")
    client.chat.completions.create(model=MODEL, messages=COPY, max_tokens=40, temperature=0)
    body = httpx.get(spec_server.base_url + "/v1/tiers").json()
    spec = body["capacity"]["speculation"]
    assert spec["proposer"] == "ngram" and spec["workload"] == "agent"
    assert [p["batch"] for p in spec["points"]] == [1, 4]
    by_tier = {t["name"]: t["speculation"] for t in body["data"]}
    assert by_tier["super"]["proposer"] == "ngram" and by_tier["super"]["drafts"] is True
    assert by_tier["free"]["drafts"] is False  # free tokens are sold for throughput
    assert 0.0 < by_tier["super"]["probe_acceptance"] <= 1.0
    assert by_tier["super"]["live_acceptance"] is not None
    assert isinstance(by_tier["super"]["relies_on_speculation"], bool)


def test_tiers_without_speculation_say_so(factory_server):
    body = httpx.get(factory_server.base_url + "/v1/tiers").json()
    assert body["capacity"]["speculation"] is None
    assert all(t["speculation"] is None for t in body["data"])
