"""The chat-completions shapers on events, with no model: OpenAI's message and chunk shapes
for text and for tool calls."""

from __future__ import annotations

import json

from tokenfactory.server.chat_events import (
    ChatContext,
    ChatResult,
    TextDelta,
    ToolCall,
    ToolCallArguments,
    ToolCallStart,
    Usage,
    chat_finish_reason,
)
from tokenfactory.server.completion_shapes import DONE, ChatCompletionShaper
from tokenfactory.server.errors import invalid_request


def context(include_usage: bool = False) -> ChatContext:
    return ChatContext("chatcmpl-abc", "m", 1, "tf-x", None, "standard", include_usage, False)


def started(**kw) -> ChatCompletionShaper:
    shaper = ChatCompletionShaper()
    shaper.start(context(**kw))
    return shaper


def chunks(raw: list[bytes]) -> list[dict]:
    out = []
    for b in raw:
        assert b.startswith(b"data: ") and b.endswith(b"\n\n")
        if b != DONE:
            out.append(json.loads(b[6:]))
    return out


CALL = ToolCall("call_1", "get_weather", '{"city": "Paris"}')
USAGE = Usage(10, 2, 5)


def test_body_with_only_calls_has_null_content_and_tool_calls_reason():
    result = ChatResult("", [CALL], "tool_calls", USAGE, "high")
    body = started().body(result, None)
    message = body["choices"][0]["message"]
    assert message["content"] is None
    assert message["tool_calls"] == [
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
        }
    ]
    assert body["choices"][0]["finish_reason"] == "tool_calls"
    assert body["service_tier"] == "high" and body["usage"]["total_tokens"] == 15
    assert body["id"] == "chatcmpl-abc" and body["object"] == "chat.completion"


def test_body_for_text_is_unchanged():
    body = started().body(ChatResult("hi", [], "stop", USAGE, "free"), None)
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "hi", "refusal": None}


def test_stream_of_text_then_a_call():
    shaper = started(include_usage=True)
    raw = shaper.opening()
    raw += shaper.events([TextDelta("Let me "), TextDelta("see.")], None)
    raw += shaper.events([ToolCallStart(0, "call_1", "get_weather")], None)
    pieces = [ToolCallArguments(0, '{"city": '), ToolCallArguments(0, '"Paris"}')]
    raw += shaper.events(pieces, None)
    raw += shaper.events([], None)  # a step whose text is held back
    result = ChatResult("Let me see.", [CALL], "tool_calls", USAGE, "high")
    closing = shaper.closing(result)
    assert closing[-1] == DONE
    got = chunks(raw + closing)
    deltas = [c["choices"][0]["delta"] for c in got if c["choices"]]
    assert deltas[0] == {"role": "assistant", "content": "Let me see."}
    assert deltas[1] == {
        "tool_calls": [
            {
                "index": 0,
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": ""},
            }
        ]
    }
    args = "".join(
        d["tool_calls"][0]["function"]["arguments"] for d in deltas[2:] if "tool_calls" in d
    )
    assert args == '{"city": "Paris"}'
    finals = [c for c in got if c["choices"] and c["choices"][0]["finish_reason"]]
    assert len(finals) == 1 and finals[0]["choices"][0]["finish_reason"] == "tool_calls"
    assert got[-1]["choices"] == [] and got[-1]["usage"]["completion_tokens"] == 5


def test_first_chunk_that_is_a_call_still_says_the_role():
    shaper = started()
    first = chunks(shaper.events([ToolCallStart(0, "call_1", "f")], None))[0]
    delta = first["choices"][0]["delta"]
    assert delta["role"] == "assistant" and delta["content"] is None
    assert delta["tool_calls"][0]["function"]["name"] == "f"


def test_failure_is_an_error_event():
    event = started().failure(invalid_request("nope", "x"))
    assert json.loads(event[6:])["error"]["param"] == "x"


def test_finish_reason_mapping():
    assert chat_finish_reason("stop", [CALL]) == "tool_calls"
    assert chat_finish_reason("stop", []) == "stop"
    assert chat_finish_reason("length", [CALL]) == "length"
