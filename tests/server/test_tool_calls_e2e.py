"""Tool calling end to end: the official openai SDK against a real server with the embedded
SmolLM2-135M-Instruct (its template ignores tools, so the server adds SmolLM2's tool prompt;
forced calls are held to the tool's schema by a grammar)."""

from __future__ import annotations

import json

import openai
import pytest

from tests.server.conftest import MODEL, ledger_rows, open_reservations, start_server

pytestmark = pytest.mark.slow

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}},
    },
}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = start_server(tmp_path_factory.mktemp("tools"))
    yield srv
    srv.stop()


def settled(server, rid: str, completion_tokens: int) -> dict:
    row = ledger_rows(server.data_dir)[rid]
    assert row["completion_tokens"] == completion_tokens
    return row


def test_required_call_then_the_tool_result_turn(server):
    client = server.openai()
    r = client.chat.completions.create(
        model=MODEL,
        messages=ASK,
        tools=[WEATHER, TIME],
        tool_choice="required",
        max_tokens=60,
        temperature=0,
    )
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.id.startswith("call_") and call.type == "function"
    assert call.function.name in ("get_weather", "get_time")
    args = json.loads(call.function.arguments)
    if call.function.name == "get_weather":
        assert set(args) == {"city"} and isinstance(args["city"], str)
    settled(server, r.id, r.usage.completion_tokens)

    # second turn: the call and its result go back; the model answers in text
    history = [
        *ASK,
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 21 C"},
    ]
    second = client.chat.completions.create(
        model=MODEL,
        messages=history,
        tools=[WEATHER, TIME],
        max_tokens=20,
        temperature=0,
    )
    assert second.choices[0].finish_reason in ("stop", "length", "tool_calls")
    # the call and its result were rendered into the prompt (as SmolLM2's text)
    assert second.usage.prompt_tokens > r.usage.prompt_tokens + 20
    settled(server, second.id, second.usage.completion_tokens)


def test_named_tool_streams_openai_deltas(server):
    client = server.openai()
    stream = client.chat.completions.create(
        model=MODEL,
        messages=ASK,
        tools=[WEATHER, TIME],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        parallel_tool_calls=False,
        max_tokens=60,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    first = pieces[0]
    assert first.index == 0 and first.id.startswith("call_") and first.type == "function"
    assert first.function.name == "get_weather" and first.function.arguments == ""
    assert all(p.index == 0 and p.id is None for p in pieces[1:])
    args = json.loads("".join(p.function.arguments for p in pieces))
    assert set(args) == {"city"}
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert [c.choices[0].finish_reason for c in finals] == ["tool_calls"]
    assert not "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    usage = chunks[-1].usage
    assert usage is not None and not chunks[-1].choices
    settled(server, chunks[0].id, usage.completion_tokens)


def test_auto_and_none(server):
    client = server.openai()
    r = client.chat.completions.create(
        model=MODEL,
        messages=ASK,
        tools=[WEATHER],
        max_tokens=40,
        temperature=0,
    )
    choice = r.choices[0]
    if choice.message.tool_calls:
        assert choice.finish_reason == "tool_calls"
        json.loads(choice.message.tool_calls[0].function.arguments)
    else:
        assert choice.finish_reason in ("stop", "length") and choice.message.content
    settled(server, r.id, r.usage.completion_tokens)
    # "none": the tools are not offered, so the prompt is the plain conversation's
    none = client.chat.completions.create(
        model=MODEL,
        messages=ASK,
        tools=[WEATHER],
        tool_choice="none",
        max_tokens=1,
    )
    plain = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=1)
    assert none.usage.prompt_tokens == plain.usage.prompt_tokens < r.usage.prompt_tokens
    assert not none.choices[0].message.tool_calls


def test_a_call_cut_by_max_tokens_is_content_with_length(server):
    client = server.openai()
    r = client.chat.completions.create(
        model=MODEL,
        messages=ASK,
        tools=[WEATHER],
        tool_choice="required",
        max_tokens=6,
        temperature=0,
    )
    choice = r.choices[0]
    assert choice.finish_reason == "length"
    assert not choice.message.tool_calls
    assert choice.message.content.startswith("<tool_call>[")
    settled(server, r.id, 6)


def test_bad_tools_are_400s_naming_the_parameter(server):
    client = server.openai()
    cases = [
        ({"tools": [WEATHER], "tool_choice": "maybe"}, "tool_choice"),
        (
            {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "x"}}},
            "tool_choice",
        ),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": [{"type": "function", "function": {"name": "a b"}}]}, "tools[0].function.name"),
        (
            {
                "tools": [
                    {
                        "type": "function",
                        "function": {
                            "name": "f",
                            "parameters": {
                                "type": "object",
                                "properties": {"a": {"not": {"type": "string"}}},
                            },
                        },
                    }
                ],
                "tool_choice": "required",
            },
            "tools[0].function.parameters",
        ),
    ]
    for extra, param in cases:
        with pytest.raises(openai.BadRequestError) as err:
            client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=5, **extra)
        assert err.value.status_code == 400
        assert err.value.body["param"] == param, err.value.body
    assert open_reservations(server.data_dir) == 0
