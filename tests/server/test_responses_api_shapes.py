"""Responses API bodies and stream events shaped from chat events, checked against the openai
SDK's own types and its stream accumulator (no model, no server)."""

from __future__ import annotations

import json
from typing import get_args

import pytest
from openai import omit
from openai.lib.streaming.responses._responses import ResponseStreamState
from openai.types.responses import Response, ResponseStreamEvent

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
from tokenfactory.server.responses_api.schemas import ResponsesRequest
from tokenfactory.server.responses_api.shape import ResponsesBodyShaper
from tokenfactory.server.responses_api.stream import ResponsesStreamShaper
from tokenfactory.server.responses_api.translate import translate

# "default" is a tier name the SDK's strict Literal accepts; the server reports its own names.
CONTEXT = ChatContext(
    request_id="resp_abc",
    model="m",
    created=1_700_000_000,
    fingerprint="fp",
    tokenizer=None,
    service_tier="default",
    include_usage=False,
    logprobs=False,
)
ECHO = translate(ResponsesRequest(model="m", input="x")).echo
USAGE = Usage(prompt_tokens=20, cached_tokens=8, completion_tokens=5)
# The SDK's event class for each event type, to validate each event against its own model.
EVENT_CLASSES = {
    cls.model_fields["type"].annotation.__args__[0]: cls
    for cls in get_args(get_args(ResponseStreamEvent)[0])
}


def validated(data: dict):
    return EVENT_CLASSES[data["type"]].model_validate(data)


def counter():
    n = iter(range(1000))
    return lambda prefix: f"{prefix}_{next(n)}"


def result(text="", calls=(), finish="stop") -> ChatResult:
    return ChatResult(text, list(calls), finish, USAGE, "default")


def stream(events, final: ChatResult) -> list[dict]:
    shaper = ResponsesStreamShaper(ECHO, clock=lambda: 1_700_000_005.0, new_id=counter())
    shaper.start(CONTEXT)
    raw = shaper.opening() + shaper.events(events, None) + shaper.closing(final)
    return [parse(chunk) for chunk in raw]


def parse(chunk: bytes) -> dict:
    event_line, data_line, blank, _ = chunk.decode().split("\n")
    data = json.loads(data_line.removeprefix("data: "))
    assert event_line == f"event: {data['type']}" and blank == ""
    validated(data)  # every field the SDK requires, with its type
    return data


def test_text_stream_events_in_order():
    events = stream([TextDelta("Hel"), TextDelta("lo")], result("Hello"))
    assert [e["type"] for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert events[0]["response"]["status"] == "in_progress"
    assert events[0]["response"]["id"] == "resp_abc"
    assert events[6]["text"] == "Hello"
    done = events[-1]["response"]
    assert done["status"] == "completed"
    assert done["output"][0]["content"][0]["text"] == "Hello"
    assert done["usage"] == {
        "input_tokens": 20,
        "input_tokens_details": {"cached_tokens": 8, "cache_write_tokens": 0},
        "output_tokens": 5,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 25,
    }
    assert done["service_tier"] == "default"


def test_text_then_a_call_are_two_items():
    events = stream(
        [
            TextDelta("Let me check."),
            ToolCallStart(0, "call_1", "get_weather"),
            ToolCallArguments(0, '{"city":'),
            ToolCallArguments(0, '"Paris"}'),
        ],
        result(
            "Let me check.", [ToolCall("call_1", "get_weather", '{"city":"Paris"}')], "tool_calls"
        ),
    )
    kinds = [e["type"] for e in events]
    assert kinds[-6:] == [
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    added = events[kinds.index("response.output_item.added", 3)]
    assert added["output_index"] == 1
    assert added["item"]["call_id"] == "call_1" and added["item"]["arguments"] == ""
    assert events[-3]["arguments"] == '{"city":"Paris"}'
    output = events[-1]["response"]["output"]
    assert [item["type"] for item in output] == ["message", "function_call"]
    assert output[1]["arguments"] == '{"city":"Paris"}'
    assert output[1]["status"] == "completed"


def test_the_sdk_accumulates_the_stream_into_the_final_response():
    state = ResponseStreamState(input_tools=[], text_format=omit)
    calls = [ToolCall("call_7", "get_time", "{}")]
    events = stream(
        [TextDelta("Hi "), ToolCallStart(0, "call_7", "get_time"), ToolCallArguments(0, "{}")],
        result("Hi ", calls, "tool_calls"),
    )
    for data in events:
        state.handle_event(validated(data))
    final = state._completed_response
    assert final is not None
    assert final.output_text == "Hi "
    assert final.output[1].type == "function_call" and final.output[1].name == "get_time"


def test_a_length_cut_is_incomplete():
    events = stream([TextDelta("abc")], result("abc", finish="length"))
    last = events[-1]
    assert last["type"] == "response.incomplete"
    assert last["response"]["status"] == "incomplete"
    assert last["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    assert last["response"]["output"][0]["status"] == "incomplete"


def test_nothing_said_still_answers_with_an_empty_message():
    events = stream([], result(""))
    output = events[-1]["response"]["output"]
    assert len(output) == 1 and output[0]["content"][0]["text"] == ""


def test_failure_is_an_error_event_then_response_failed():
    shaper = ResponsesStreamShaper(ECHO, clock=lambda: 0.0, new_id=counter())
    shaper.start(CONTEXT)
    shaper.opening()
    shaper.events([TextDelta("par")], None)
    chunks = shaper.failure(engine_error(partial=True)).split(b"\n\n")
    error, failed = (parse(c + b"\n\n") for c in chunks[:2])
    assert error["type"] == "error" and error["code"] == "engine_error"
    assert failed["type"] == "response.failed"
    assert failed["response"]["status"] == "failed"
    assert failed["response"]["output"][0]["status"] == "incomplete"
    assert failed["sequence_number"] == error["sequence_number"] + 1


@pytest.mark.parametrize(
    ("final", "status", "kinds"),
    [
        (result("Hello"), "completed", ["message"]),
        (
            result(
                "",
                [ToolCall("call_1", "f", '{"a":1}'), ToolCall("call_2", "g", "{}")],
                "tool_calls",
            ),
            "completed",
            ["function_call", "function_call"],
        ),
        (result("Hel", finish="length"), "incomplete", ["message"]),
    ],
)
def test_whole_body(final, status, kinds):
    shaper = ResponsesBodyShaper(ECHO, clock=lambda: 1_700_000_009.0, new_id=counter())
    shaper.start(CONTEXT)
    body = shaper.body(final, None)
    parsed = Response.model_validate(body)
    assert parsed.id == "resp_abc" and parsed.object == "response"
    assert parsed.status == status
    assert [item.type for item in parsed.output] == kinds
    assert parsed.output_text == final.text
    assert parsed.usage is not None and parsed.usage.input_tokens_details.cached_tokens == 8
    if status == "incomplete":
        assert parsed.incomplete_details is not None
        assert parsed.incomplete_details.reason == "max_output_tokens"
    else:
        assert parsed.completed_at == 1_700_000_009
    calls = [item for item in parsed.output if item.type == "function_call"]
    assert [(c.call_id, c.arguments) for c in calls] == [
        (c.call_id, c.arguments) for c in final.tool_calls
    ]
