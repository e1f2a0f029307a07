"""The official openai SDK's `client.responses` against a real factory process: text,
streaming, function tools over two turns, errors, and the ledger."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from tests.server.conftest import MODEL, ledger_rows

pytestmark = pytest.mark.slow

TIERS = ("free", "standard", "high", "ultra", "super")
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The current weather in a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    },
    "strict": True,
}


def ledger_id(response_id: str) -> str:
    """The ledger row of a response: the same random part under the factory's chat prefix."""
    return "chatcmpl-" + response_id.removeprefix("resp_")


def test_text_response_is_billed(factory_server):
    client = factory_server.openai("super")
    r = client.responses.create(
        model=MODEL,
        instructions="You are terse.",
        input="Name three colours.",
        max_output_tokens=12,
        temperature=0,
        service_tier="super",
    )
    assert r.object == "response" and r.id.startswith("resp_")
    assert r.status in ("completed", "incomplete")
    assert r.output[0].type == "message" and r.output_text
    assert r.usage.output_tokens <= 12
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens
    assert r.usage.output_tokens_details.reasoning_tokens == 0
    assert r.service_tier in TIERS
    if r.status == "incomplete":
        assert r.incomplete_details.reason == "max_output_tokens"
    row = ledger_rows(factory_server.data_dir)[ledger_id(r.id)]
    assert row["prompt_tokens"] == r.usage.input_tokens
    assert row["completion_tokens"] == r.usage.output_tokens
    assert row["tier_requested"] == "super" and row["tier_delivered"] == r.service_tier


def test_stream_matches_the_whole_response(factory_server):
    client = factory_server.openai("high")
    kw = dict(model=MODEL, input="Say hello.", max_output_tokens=10, temperature=0)
    # Warm the prefix cache first, so both requests below compute the same uncached tail
    # (greedy text can change with how much of the prompt came from the cache, in bf16).
    client.responses.create(**kw)
    whole = client.responses.create(**kw)
    with client.responses.stream(**kw) as stream:
        events = list(stream)
    kinds = [event.type for event in events]
    # the SDK's get_final_response() wants response.completed; a cut stream ends incomplete
    final = events[-1].response
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] in ("response.completed", "response.incomplete")
    assert "response.output_text.delta" in kinds
    assert final.output_text == whole.output_text
    assert final.usage.output_tokens == whole.usage.output_tokens
    assert final.status == whole.status
    row = ledger_rows(factory_server.data_dir)[ledger_id(final.id)]
    assert row["completion_tokens"] == final.usage.output_tokens


def test_function_call_then_its_output(factory_server):
    client = factory_server.openai("high")
    question = {"role": "user", "content": "What is the weather in Paris?"}
    first = client.responses.create(
        model=MODEL,
        input=[question],
        tools=[WEATHER],
        tool_choice="required",
        max_output_tokens=48,
        temperature=0,
    )
    calls = [item for item in first.output if item.type == "function_call"]
    assert first.status == "completed" and calls
    assert calls[0].name == "get_weather" and calls[0].call_id
    assert isinstance(json.loads(calls[0].arguments)["city"], str)
    second = client.responses.create(
        model=MODEL,
        input=[
            question,
            *[item.model_dump(exclude_none=True) for item in first.output],
            {"type": "function_call_output", "call_id": calls[0].call_id, "output": "Sunny, 21 C"},
        ],
        tools=[WEATHER],
        max_output_tokens=16,
        temperature=0,
    )
    assert second.status in ("completed", "incomplete")
    assert second.usage.input_tokens > first.usage.input_tokens


def test_streamed_function_call(factory_server):
    client = factory_server.openai("high")
    with client.responses.stream(
        model=MODEL,
        input="Weather in Rome?",
        tools=[WEATHER],
        tool_choice={"type": "function", "name": "get_weather"},
        max_output_tokens=48,
        temperature=0,
    ) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert "response.function_call_arguments.delta" in kinds
    assert "response.function_call_arguments.done" in kinds
    call = next(item for item in final.output if item.type == "function_call")
    assert call.name == "get_weather" and "city" in json.loads(call.arguments)


def test_errors_in_openai_shape(factory_server):
    client = factory_server.openai("standard")
    with pytest.raises(openai.BadRequestError) as bad:
        client.responses.create(
            model=MODEL,
            input=[
                {
                    "role": "user",
                    "content": [{"type": "input_image", "image_url": "https://x/y.png"}],
                }
            ],
        )
    assert bad.value.status_code == 400
    assert bad.value.body["param"] == "input[0].content[0]"
    with pytest.raises(openai.BadRequestError) as stored:
        client.responses.create(model=MODEL, input="x", previous_response_id="resp_123")
    assert stored.value.body["param"] == "previous_response_id"
    with pytest.raises(openai.BadRequestError) as missing:
        client.responses.create(model=MODEL)  # type: ignore[call-overload]
    assert missing.value.body["param"] == "input"
    bad_key = openai.OpenAI(
        base_url=factory_server.base_url + "/v1", api_key="tf-not-a-key", max_retries=0
    )
    with pytest.raises(openai.AuthenticationError):
        bad_key.responses.create(model=MODEL, input="x")


def test_usage_endpoint_counts_responses(factory_server):
    key = factory_server.keys["ultra"]
    headers = {"authorization": f"Bearer {key}"}

    def billed() -> int:
        usage = httpx.get(factory_server.base_url + "/v1/usage", headers=headers).json()
        return sum(d["completion_tokens"] for d in usage["data"])

    before = billed()
    r = factory_server.openai("ultra").responses.create(
        model=MODEL, input="Count to three.", max_output_tokens=6
    )
    assert billed() == before + r.usage.output_tokens
