"""Speculative decoding through a real factory process and the official openai SDK: the same
text as without it, streamed or not, usage and ledger exact, and /v1/tiers telling about it."""

from __future__ import annotations

import httpx
import pytest

from tests.server.conftest import MODEL, ledger_rows, start_server

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


@pytest.fixture(scope="module")
def plain_server(tmp_path_factory):
    """The same server without speculation, for like-for-like comparisons: a request that hits
    the prefix cache recomputes the prompt's tail in a span of another length, which may round
    differently in bf16 and flip a near tie (as batch size may), so each comparison sends the
    same requests to both servers in the same order, and their caches hold the same blocks."""
    server = start_server(tmp_path_factory.mktemp("plain"))
    yield server
    server.stop()


def test_same_text_stream_and_usage_as_without_speculation(spec_server, plain_server):
    kw = dict(model=MODEL, messages=COPY, max_tokens=60, temperature=0)
    plain = plain_server.openai("super").chat.completions.create(**kw)
    client = spec_server.openai("super")
    whole = client.chat.completions.create(**kw)
    assert whole.choices[0].message.content == plain.choices[0].message.content
    assert whole.usage.completion_tokens == plain.usage.completion_tokens
    assert whole.choices[0].finish_reason == plain.choices[0].finish_reason
    stream = dict(kw, stream=True, stream_options={"include_usage": True})
    plain_chunks = list(plain_server.openai("super").chat.completions.create(**stream))
    chunks = list(client.chat.completions.create(**stream))

    def text(chunks: list) -> str:
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

    assert text(chunks) == text(plain_chunks)
    assert chunks[-1].usage.completion_tokens == plain_chunks[-1].usage.completion_tokens
    rows = ledger_rows(spec_server.data_dir)
    assert rows[whole.id]["completion_tokens"] == whole.usage.completion_tokens
    assert rows[chunks[0].id]["completion_tokens"] == chunks[-1].usage.completion_tokens
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
