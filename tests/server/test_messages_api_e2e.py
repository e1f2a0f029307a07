"""The official anthropic SDK's `client.messages` against a real factory process: text,
streaming, tool use over two turns, errors in Anthropic's shape, and the ledger."""

from __future__ import annotations

import json
import time

import anthropic
import httpx
import pytest

from tests.server.conftest import MODEL, ledger_rows

pytestmark = pytest.mark.slow

TIERS = ("free", "standard", "high", "ultra", "super")
WEATHER = {
    "name": "get_weather",
    "description": "The current weather in a city.",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    },
}
QUESTION = {"role": "user", "content": "What is the weather in Paris?"}


def client(server, tier: str = "high", key: str | None = None) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        base_url=server.base_url, api_key=key or server.keys[tier], max_retries=0
    )


def ledger_id(message_id: str) -> str:
    """The ledger row of a message: the same random part under the factory's chat prefix."""
    return "chatcmpl-" + message_id.removeprefix("msg_")


def test_text_message_is_billed(factory_server):
    m = client(factory_server, "super").messages.create(
        model=MODEL,
        max_tokens=12,
        system="You are terse.",
        messages=[{"role": "user", "content": "Name three colours."}],
        extra_body={"temperature": 0},  # newer SDKs dropped the argument; the API keeps it
        service_tier="auto",
    )
    assert m.type == "message" and m.role == "assistant" and m.id.startswith("msg_")
    assert m.content[0].type == "text" and m.content[0].text
    assert m.stop_reason in ("end_turn", "max_tokens")
    assert 0 < m.usage.output_tokens <= 12
    assert m.usage.service_tier in TIERS
    row = ledger_rows(factory_server.data_dir)[ledger_id(m.id)]
    assert row["prompt_tokens"] == m.usage.input_tokens + m.usage.cache_read_input_tokens
    assert row["cached_tokens"] == m.usage.cache_read_input_tokens
    assert row["completion_tokens"] == m.usage.output_tokens
    assert row["tier_requested"] == "super"  # auto: the key's default tier


def test_a_stop_sequence_ends_the_message_and_is_named(factory_server):
    m = client(factory_server).messages.create(
        model=MODEL,
        max_tokens=32,
        messages=[{"role": "user", "content": "Name three colours."}],
        stop_sequences=[" "],  # the reply's first space ends it
        extra_body={"temperature": 0},
    )
    assert (m.stop_reason, m.stop_sequence) == ("stop_sequence", " ")
    assert " " not in m.content[0].text


def test_count_tokens_counts_the_prompt_as_run(factory_server):
    c = client(factory_server, "standard")
    kw = dict(model=MODEL, system="Be brief.", messages=[QUESTION], tools=[WEATHER])
    counted = c.messages.count_tokens(**kw)
    m = c.messages.create(**kw, max_tokens=2)
    assert counted.input_tokens == m.usage.input_tokens + m.usage.cache_read_input_tokens
    with pytest.raises(anthropic.BadRequestError) as bad:
        c.messages.count_tokens(model=MODEL, messages=[QUESTION], tools=[{"name": "x"}])
    assert bad.value.body["error"]["message"].startswith("tools[0].input_schema")


def test_stream_matches_the_whole_message(factory_server):
    c = client(factory_server, "high")
    kw = dict(
        model=MODEL,
        max_tokens=10,
        messages=[{"role": "user", "content": "Say hello."}],
        extra_body={"temperature": 0},
    )
    # Warm the prefix cache first, so both requests below compute the same uncached tail
    # (greedy text can change with how much of the prompt came from the cache, in bf16).
    c.messages.create(**kw)
    whole = c.messages.create(**kw)
    with c.messages.stream(**kw) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == whole.content[0].text == final.content[0].text
    assert final.stop_reason == whole.stop_reason
    assert final.usage.output_tokens == whole.usage.output_tokens

    def prompt(m):  # the whole prompt: read fresh plus served from the prefix cache
        return m.usage.input_tokens + m.usage.cache_read_input_tokens

    assert prompt(final) == prompt(whole)
    row = ledger_rows(factory_server.data_dir)[ledger_id(final.id)]
    assert row["completion_tokens"] == final.usage.output_tokens


def test_tool_use_then_its_result(factory_server):
    c = client(factory_server, "high")
    first = c.messages.create(
        model=MODEL,
        max_tokens=48,
        tools=[WEATHER],
        tool_choice={"type": "any"},
        messages=[QUESTION],
        extra_body={"temperature": 0},
    )
    uses = [b for b in first.content if b.type == "tool_use"]
    assert first.stop_reason == "tool_use" and uses
    assert uses[0].id.startswith("toolu_") and uses[0].name == "get_weather"
    assert isinstance(uses[0].input["city"], str)
    second = c.messages.create(
        model=MODEL,
        max_tokens=16,
        tools=[WEATHER],
        messages=[
            QUESTION,
            {
                "role": "assistant",
                "content": [b.model_dump(exclude_none=True) for b in first.content],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": uses[0].id, "content": "Sunny, 21 C"}
                ],
            },
        ],
        extra_body={"temperature": 0},
    )
    assert second.stop_reason in ("end_turn", "max_tokens", "tool_use")
    assert second.usage.output_tokens > 0


def test_streamed_tool_use(factory_server):
    with client(factory_server, "high").messages.stream(
        model=MODEL,
        max_tokens=48,
        tools=[WEATHER],
        tool_choice={"type": "tool", "name": "get_weather"},
        messages=[QUESTION],
        extra_body={"temperature": 0},
    ) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    use = next(b for b in final.content if b.type == "tool_use")
    assert use.name == "get_weather" and "city" in use.input
    assert final.stop_reason == "tool_use"


def test_errors_in_anthropic_shape(factory_server):
    c = client(factory_server, "standard")
    with pytest.raises(anthropic.BadRequestError) as bad:
        c.messages.create(
            model=MODEL,
            max_tokens=8,
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "image", "source": {"type": "url", "url": "https://x/y.png"}}
                    ],
                }
            ],
        )
    assert bad.value.status_code == 400
    assert bad.value.body["type"] == "error"
    assert bad.value.body["error"]["type"] == "invalid_request_error"
    assert bad.value.body["error"]["message"].startswith("messages[0].content[0].type")
    missing = httpx.post(
        factory_server.base_url + "/v1/messages",
        headers={"x-api-key": factory_server.keys["standard"], "anthropic-version": "2023-06-01"},
        json={"model": MODEL, "messages": [{"role": "user", "content": "x"}]},
    )
    assert missing.status_code == 400
    assert missing.json()["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in missing.json()["error"]["message"]
    with pytest.raises(anthropic.AuthenticationError) as unauthorized:
        client(factory_server, key="tf-not-a-key").messages.create(
            model=MODEL, max_tokens=4, messages=[QUESTION]
        )
    assert unauthorized.value.body["error"]["type"] == "authentication_error"
    with pytest.raises(anthropic.NotFoundError) as unknown:
        c.messages.create(model="no-such-model", max_tokens=4, messages=[QUESTION])
    assert unknown.value.body["error"]["type"] == "not_found_error"


def test_a_client_leaving_mid_stream_is_billed_what_it_got(factory_server):
    body = {
        "model": MODEL,
        "max_tokens": 400,
        "stream": True,
        "messages": [{"role": "user", "content": "Write a long story about a dragon."}],
    }
    headers = {"x-api-key": factory_server.keys["super"], "anthropic-version": "2023-06-01"}
    deltas, message_id = 0, None
    with httpx.stream(
        "POST", factory_server.base_url + "/v1/messages", json=body, headers=headers
    ) as response:
        for line in response.iter_lines():
            if not line.startswith("data: "):
                continue
            event = json.loads(line.removeprefix("data: "))
            if event["type"] == "message_start":
                message_id = event["message"]["id"]
            deltas += event["type"] == "content_block_delta"
            if deltas == 3:
                break  # leave: the connection closes with the stream
    assert message_id is not None
    deadline = time.monotonic() + 30
    rows = ledger_rows(factory_server.data_dir)
    while ledger_id(message_id) not in rows and time.monotonic() < deadline:
        time.sleep(0.1)
        rows = ledger_rows(factory_server.data_dir)
    row = rows[ledger_id(message_id)]
    assert row["finish_reason"] == "disconnected" and row["client_disconnected"]
    assert 3 <= row["completion_tokens"] < 400


def test_usage_endpoint_counts_messages(factory_server):
    key = factory_server.keys["ultra"]

    def billed() -> int:
        usage = httpx.get(
            factory_server.base_url + "/v1/usage", headers={"authorization": f"Bearer {key}"}
        ).json()
        return sum(d["completion_tokens"] for d in usage["data"])

    before = billed()
    m = client(factory_server, key=key).messages.create(
        model=MODEL, max_tokens=6, messages=[{"role": "user", "content": "Count to three."}]
    )
    assert billed() == before + m.usage.output_tokens
