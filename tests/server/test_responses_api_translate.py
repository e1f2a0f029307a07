"""A Responses API request read as a chat-completions request (no model, no server)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from tokenfactory.server.errors import APIError, invalid_request
from tokenfactory.server.responses_api.schemas import ResponsesRequest
from tokenfactory.server.responses_api.translate import (
    chat_validation_error,
    rename_param,
    translate,
)
from tokenfactory.server.schemas import ChatCompletionRequest

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    "strict": True,
}
TIME = {"type": "function", "name": "get_time", "parameters": {"type": "object"}}


def chat_of(**body):
    return translate(ResponsesRequest(model="m", **body)).chat


def refusal(**body) -> APIError:
    with pytest.raises(APIError) as info:
        translate(ResponsesRequest(model="m", **body))
    assert info.value.status == 400
    return info.value


def test_string_input_with_instructions_and_sampling():
    chat = chat_of(
        input="Hi",
        instructions="Be brief.",
        max_output_tokens=12,
        temperature=0.3,
        top_p=0.9,
        service_tier="priority",
        user="u1",
        prompt_cache_key="k",
        metadata={"task_id": "t-1"},
        stream=True,
    )
    assert [(m.role, m.content) for m in chat.messages] == [
        ("system", "Be brief."),
        ("user", "Hi"),
    ]
    assert chat.max_completion_tokens == 12
    assert (chat.temperature, chat.top_p) == (0.3, 0.9)
    assert (chat.service_tier, chat.user, chat.prompt_cache_key) == ("priority", "u1", "k")
    assert chat.stream is True
    assert chat.metadata == {"task_id": "t-1"}  # the task id travels to the ledger
    assert chat.tools is None


def test_items_become_messages_with_calls_and_results():
    chat = chat_of(
        input=[
            {"role": "developer", "content": "Use tools."},
            {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "Paris?"}],
            },
            {
                "type": "message",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "Checking.", "annotations": []}],
            },
            {
                "type": "function_call",
                "call_id": "c1",
                "name": "get_weather",
                "arguments": '{"city":"Paris"}',
            },
            {"type": "function_call", "call_id": "c2", "name": "get_time", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
            {
                "type": "function_call_output",
                "call_id": "c2",
                "output": [{"type": "input_text", "text": "noon"}],
            },
        ],
        tools=[WEATHER, TIME],
    )
    roles = [m.role for m in chat.messages]
    assert roles == ["developer", "user", "assistant", "tool", "tool"]
    assistant = chat.messages[2]
    assert assistant.content == "Checking."  # text and calls of one turn stay one message
    assert [c["id"] for c in assistant.tool_calls] == ["c1", "c2"]
    assert assistant.tool_calls[0]["function"] == {
        "name": "get_weather",
        "arguments": '{"city":"Paris"}',
    }
    assert [(m.tool_call_id, m.content) for m in chat.messages[3:]] == [
        ("c1", "sunny"),
        ("c2", "noon"),
    ]


def test_a_call_after_a_user_turn_opens_an_assistant_message():
    chat = chat_of(
        input=[
            {"role": "user", "content": "time?"},
            {"type": "function_call", "call_id": "c9", "name": "get_time", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c9", "output": "noon"},
        ],
        tools=[TIME],
    )
    assert [m.role for m in chat.messages] == ["user", "assistant", "tool"]
    assert chat.messages[1].content is None
    assert chat.messages[1].tool_calls[0]["id"] == "c9"


def test_flat_function_tools_become_chat_tools():
    chat = chat_of(input="x", tools=[WEATHER], tool_choice="required", parallel_tool_calls=False)
    assert chat.tools == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": WEATHER["parameters"],
                "description": "Weather in a city",
                "strict": True,
            },
        }
    ]
    assert chat.tool_choice == "required"
    assert chat.parallel_tool_calls is False


def test_named_and_allowed_tool_choices():
    named = chat_of(
        input="x", tools=[WEATHER, TIME], tool_choice={"type": "function", "name": "get_time"}
    )
    assert named.tool_choice == {"type": "function", "function": {"name": "get_time"}}
    allowed = chat_of(
        input="x",
        tools=[WEATHER, TIME],
        tool_choice={
            "type": "allowed_tools",
            "mode": "required",
            "tools": [{"type": "function", "name": "get_time"}],
        },
    )
    assert allowed.tool_choice == "required"
    assert [t["function"]["name"] for t in allowed.tools] == ["get_time"]


def test_text_format_becomes_response_format():
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    chat = chat_of(
        input="x",
        text={
            "format": {"type": "json_schema", "name": "answer", "schema": schema, "strict": True}
        },
    )
    assert chat.response_format == {
        "type": "json_schema",
        "json_schema": {"name": "answer", "schema": schema, "strict": True},
    }
    assert chat_of(input="x", text={"format": {"type": "json_object"}}).response_format == {
        "type": "json_object"
    }
    assert chat_of(input="x", text={"format": {"type": "text"}}).response_format is None


@pytest.mark.parametrize(
    ("body", "param", "says"),
    [
        ({"previous_response_id": "resp_1"}, "previous_response_id", "whole conversation"),
        ({"conversation": "conv_1"}, "conversation", "stores no conversations"),
        ({"background": True}, "background", "Background"),
        ({"truncation": "auto"}, "truncation", "disabled"),
        ({"include": ["message.output_text.logprobs"]}, "include[0]", "not supported"),
        ({"tools": [WEATHER, {"type": "web_search"}]}, "tools[1].type", "web_search"),
        ({"tools": [{"type": "function", "name": "bad name!"}]}, "tools[0].name", "1-64"),
        (
            {"tools": [WEATHER], "tool_choice": {"type": "function", "name": "nope"}},
            "tool_choice.name",
            "nope",
        ),
        ({"tools": [WEATHER], "tool_choice": "sometimes"}, "tool_choice", "sometimes"),
        ({"tool_choice": "required"}, "tool_choice", "at least one tool"),
        ({"text": {"format": {"type": "xml"}}}, "text.format", "xml"),
        ({"text": {"format": {"type": "json_schema", "name": "a"}}}, "text.format", "schema"),
    ],
)
def test_unsupported_settings_are_refused_by_name(body, param, says):
    err = refusal(input="x", **body)
    assert err.param == param
    assert says in err.message


@pytest.mark.parametrize(
    ("item", "param", "says"),
    [
        (
            {"role": "user", "content": [{"type": "input_image", "image_url": "u"}]},
            "input[0].content[0]",
            "input_image",
        ),
        ({"role": "tool", "content": "x"}, "input[0].role", "role"),
        ({"type": "reasoning", "summary": []}, "input[0].type", "reasoning"),
        ({"type": "item_reference", "id": "msg_1"}, "input[0]", "stores no items"),
        ({"type": "function_call", "call_id": "c", "name": "f"}, "input[0].arguments", "arguments"),
        (
            {"type": "function_call_output", "call_id": "c1", "output": "x"},
            "input[0].call_id",
            "c1",
        ),
    ],
)
def test_bad_input_items_are_refused_by_position(item, param, says):
    err = refusal(input=[item])
    assert err.param == param
    assert says in err.message


def test_metadata_is_held_to_openai_limits():
    with pytest.raises(ValidationError):
        ResponsesRequest(model="m", input="x", metadata={f"k{i}": "v" for i in range(17)})


@pytest.mark.parametrize(
    ("chat", "param"),
    [
        ({"messages": []}, "input"),
        ({"messages": [{"role": "user"}], "max_tokens": 0}, "max_output_tokens"),
    ],
)
def test_a_chat_validation_error_names_this_api_parameter(chat, param):
    with pytest.raises(ValidationError) as info:
        ChatCompletionRequest.model_validate({"model": "m", **chat})
    assert rename_param(chat_validation_error(info.value)).param == param


def test_empty_input_list_is_refused():
    assert refusal(input=[]).param == "input"


def test_echo_reports_the_request_settings():
    call = translate(
        ResponsesRequest(
            model="m", input="x", tools=[WEATHER], max_output_tokens=5, metadata={"a": "b"}
        )
    )
    echo = call.echo
    assert echo["tools"] == [WEATHER]
    assert echo["tool_choice"] == "auto"
    assert echo["parallel_tool_calls"] is True
    assert echo["max_output_tokens"] == 5
    assert echo["metadata"] == {"a": "b"}
    assert echo["text"] == {"format": {"type": "text"}}
    assert echo["store"] is False


def test_chat_errors_are_renamed_to_this_api():
    assert rename_param(invalid_request("x", "max_completion_tokens")).param == "max_output_tokens"
    assert rename_param(invalid_request("x", "messages")).param == "input"
    assert rename_param(invalid_request("x", "messages[3].content")).param == "input"
    assert (
        rename_param(invalid_request("x", "tools[2].function.parameters")).param
        == "tools[2].parameters"
    )
    assert rename_param(invalid_request("x", "response_format")).param == "text.format"
    same = invalid_request("x", "temperature")
    assert rename_param(same) is same
