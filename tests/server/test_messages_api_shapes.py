"""Anthropic message bodies and stream events shaped from chat events, checked against the
anthropic SDK's own types and its stream accumulator (no model, no server)."""

from __future__ import annotations

import json
from typing import get_args

import pytest
from anthropic.lib.streaming._messages import accumulate_event
from anthropic.types import Message, RawMessageStreamEvent

from tokenfactory.server.chat_events import (
    ChatContext,
    ChatResult,
    TextDelta,
    ToolCall,
    ToolCallArguments,
    ToolCallStart,
    Usage,
)
from tokenfactory.server.errors import engine_error
from tokenfactory.server.messages_api.shape import MessagesBodyShaper
from tokenfactory.server.messages_api.stream import MessagesStreamShaper

CONTEXT = ChatContext(
    request_id="msg_abc",
    model="m",
    created=1_700_000_000,
    fingerprint="fp",
    tokenizer=None,
    service_tier="standard",
    include_usage=False,
    logprobs=False,
)
USAGE = Usage(prompt_tokens=30, cached_tokens=16, completion_tokens=7)
EVENT_CLASSES = {
    cls.model_fields["type"].annotation.__args__[0]: cls
    for cls in get_args(get_args(RawMessageStreamEvent)[0])
}


def result(text="", calls=(), finish="stop") -> ChatResult:
    return ChatResult(text, list(calls), finish, USAGE, "standard")


def parse(chunk: bytes) -> dict:
    event_line, data_line, blank, _ = chunk.decode().split("\n")
    data = json.loads(data_line.removeprefix("data: "))
    assert event_line == f"event: {data['type']}" and blank == ""
    if data["type"] in EVENT_CLASSES:
        EVENT_CLASSES[data["type"]].model_validate(data)
    return data


def stream(events, final: ChatResult) -> list[dict]:
    shaper = MessagesStreamShaper()
    shaper.start(CONTEXT)
    raw = shaper.opening() + shaper.events(events, None) + shaper.closing(final)
    return [parse(chunk) for chunk in raw]


def accumulate(events: list[dict]) -> Message:
    snapshot = None
    bufs: dict[int, bytes] = {}
    for data in events:
        if data["type"] == "ping":
            continue
        snapshot = accumulate_event(event=data, current_snapshot=snapshot, json_bufs=bufs)
    assert snapshot is not None
    return snapshot


def test_text_stream_events_in_order():
    events = stream([TextDelta("Hel"), TextDelta("lo")], result("Hello"))
    assert [e["type"] for e in events] == [
        "message_start",
        "ping",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    start = events[0]["message"]
    assert start["id"] == "msg_abc" and start["content"] == [] and start["stop_reason"] is None
    assert events[3]["delta"] == {"type": "text_delta", "text": "Hel"}
    assert events[6]["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert events[6]["usage"] == {
        "input_tokens": 14,  # read fresh; the 16 cached ones are counted apart
        "output_tokens": 7,
        "cache_read_input_tokens": 16,
        "cache_creation_input_tokens": 0,
        "service_tier": "standard",
    }
    message = accumulate(events)
    assert message.content[0].text == "Hello"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (14, 7)


def test_text_then_tool_use_blocks():
    events = stream(
        [
            TextDelta("Checking."),
            ToolCallStart(0, "call_ab12", "get_weather"),
            ToolCallArguments(0, '{"city":'),
            ToolCallArguments(0, '"Paris"}'),
            ToolCallStart(1, "call_cd34", "get_time"),
            ToolCallArguments(1, "{}"),
        ],
        result(
            "Checking.",
            [
                ToolCall("call_ab12", "get_weather", '{"city":"Paris"}'),
                ToolCall("call_cd34", "get_time", "{}"),
            ],
            "tool_calls",
        ),
    )
    starts = [e for e in events if e["type"] == "content_block_start"]
    assert [s["index"] for s in starts] == [0, 1, 2]
    assert starts[1]["content_block"] == {
        "type": "tool_use",
        "id": "toolu_ab12",
        "name": "get_weather",
        "input": {},
    }
    stops = [e["index"] for e in events if e["type"] == "content_block_stop"]
    assert stops == [0, 1, 2]
    json_deltas = [
        e["delta"]["partial_json"] for e in events if e.get("index") == 1 and "delta" in e
    ]
    assert "".join(json_deltas) == '{"city":"Paris"}'
    message = accumulate(events)
    assert message.stop_reason == "tool_use"
    assert [b.type for b in message.content] == ["text", "tool_use", "tool_use"]
    assert message.content[1].input == {"city": "Paris"}
    assert message.content[2].input == {}


def test_length_cut_and_empty_output():
    cut = stream([TextDelta("abc")], result("abc", finish="length"))
    assert cut[-2]["delta"]["stop_reason"] == "max_tokens"
    empty = stream([], result(""))
    assert [e["type"] for e in empty][2:5] == [
        "content_block_start",
        "content_block_stop",
        "message_delta",
    ]
    assert accumulate(empty).content[0].text == ""


def test_failure_is_an_error_event():
    shaper = MessagesStreamShaper()
    shaper.start(CONTEXT)
    data = parse(shaper.failure(engine_error(partial=True)))
    assert data["type"] == "error"
    assert data["error"]["type"] == "api_error"
    assert "billed only for the tokens you received" in data["error"]["message"]


@pytest.mark.parametrize(
    ("final", "stop", "kinds"),
    [
        (result("Hello"), "end_turn", ["text"]),
        (result("Hel", finish="length"), "max_tokens", ["text"]),
        (
            result("", [ToolCall("call_1", "f", '{"a": [1, 2]}')], "tool_calls"),
            "tool_use",
            ["tool_use"],
        ),
        (
            result("Sure.", [ToolCall("call_2", "g", "{}")], "tool_calls"),
            "tool_use",
            ["text", "tool_use"],
        ),
    ],
)
def test_whole_body(final, stop, kinds):
    shaper = MessagesBodyShaper()
    shaper.start(CONTEXT)
    message = Message.model_validate(shaper.body(final, None))
    assert message.id == "msg_abc" and message.type == "message" and message.role == "assistant"
    assert message.stop_reason == stop
    assert [b.type for b in message.content] == kinds
    uses = [b for b in message.content if b.type == "tool_use"]
    assert [(u.id, u.input) for u in uses] == [
        ("toolu_" + c.call_id.removeprefix("call_"), json.loads(c.arguments))
        for c in final.tool_calls
    ]
    assert message.usage.cache_read_input_tokens == 16
    assert message.usage.service_tier == "standard"


def test_a_stop_sequence_is_named_in_the_body_and_the_stream():
    final = ChatResult("Hello", [], "stop", USAGE, "standard", stop_sequence="\n\n")
    shaper = MessagesBodyShaper()
    shaper.start(CONTEXT)
    message = Message.model_validate(shaper.body(final, None))
    assert (message.stop_reason, message.stop_sequence) == ("stop_sequence", "\n\n")
    delta = [e for e in stream([TextDelta("Hello")], final) if e["type"] == "message_delta"]
    assert delta[0]["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": "\n\n"}


def test_message_start_counts_the_prompt():
    shaper = MessagesStreamShaper()
    shaper.start(ChatContext("msg_abc", "m", 1, "fp", None, "standard", False, False, 30))
    start = parse(shaper.opening()[0])
    assert start["message"]["usage"]["input_tokens"] == 30
