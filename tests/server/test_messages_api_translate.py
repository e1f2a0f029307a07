"""An Anthropic Messages request read as a chat-completions request; errors in Anthropic's
shape (no model, no server)."""

from __future__ import annotations

import json

import pytest

from tokenfactory.server import errors
from tokenfactory.server.errors import APIError, invalid_request
from tokenfactory.server.messages_api.errors import anthropic_body, speaks_anthropic
from tokenfactory.server.messages_api.schemas import MessagesRequest
from tokenfactory.server.messages_api.translate import rename_param, translate

WEATHER = {
    "name": "get_weather",
    "description": "Weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}
TIME = {"name": "get_time", "input_schema": {"type": "object"}}
USER = [{"role": "user", "content": "Hi"}]


def chat_of(**body):
    body.setdefault("messages", USER)
    return translate(MessagesRequest(model="m", max_tokens=16, **body))


def refusal(**body) -> APIError:
    with pytest.raises(APIError) as info:
        chat_of(**body)
    assert info.value.status == 400
    return info.value


def test_system_sampling_and_metadata():
    chat = chat_of(
        system=[{"type": "text", "text": "Be "}, {"type": "text", "text": "brief."}],
        temperature=0.5,
        top_p=0.9,
        top_k=40,
        stop_sequences=["END"],
        metadata={"user_id": "u-1", "task_id": "t-7"},
        stream=True,
    )
    assert [(m.role, m.content) for m in chat.messages] == [
        ("system", "Be brief."),
        ("user", "Hi"),
    ]
    assert (chat.max_tokens, chat.temperature, chat.top_p, chat.top_k) == (16, 0.5, 0.9, 40)
    assert chat.stop == ["END"]
    assert chat.user == "u-1"
    assert chat.metadata == {"task_id": "t-7"}  # the task id travels to the ledger
    assert chat.stream is True


def test_output_config_format_becomes_response_format():
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}}
    chat = chat_of(output_config={"format": {"type": "json_schema", "schema": schema}})
    assert chat.response_format == {
        "type": "json_schema",
        "json_schema": {"name": "output", "schema": schema},
    }
    assert chat_of(output_config={"effort": "low"}).response_format is None


@pytest.mark.parametrize(
    ("asked", "chat_tier"),
    [("auto", None), ("standard_only", None), (None, None), ("high", "high")],
)
def test_service_tier(asked, chat_tier):
    assert chat_of(service_tier=asked).service_tier == chat_tier


def test_tool_use_and_tool_result_turns():
    chat = chat_of(
        tools=[WEATHER, TIME],
        messages=[
            {"role": "user", "content": [{"type": "text", "text": "Paris weather?"}]},
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "Checking."},
                    {
                        "type": "tool_use",
                        "id": "toolu_1",
                        "name": "get_weather",
                        "input": {"city": "Paris"},
                    },
                    {"type": "tool_use", "id": "toolu_2", "name": "get_time", "input": {}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"},
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_2",
                        "content": [{"type": "text", "text": "clock broke"}],
                        "is_error": True,
                    },
                    {"type": "text", "text": "Thanks"},
                ],
            },
        ],
    )
    assert [m.role for m in chat.messages] == ["user", "assistant", "tool", "tool", "user"]
    assistant = chat.messages[1]
    assert assistant.content == "Checking."
    assert [c["id"] for c in assistant.tool_calls] == ["toolu_1", "toolu_2"]
    assert json.loads(assistant.tool_calls[0]["function"]["arguments"]) == {"city": "Paris"}
    assert (chat.messages[2].tool_call_id, chat.messages[2].content) == ("toolu_1", "sunny")
    assert chat.messages[3].content == "Error: clock broke"
    assert chat.messages[4].content == "Thanks"
    assert chat.tools[0] == {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": WEATHER["input_schema"],
            "description": "Weather in a city",
        },
    }
    assert chat.tool_choice == "auto"


@pytest.mark.parametrize(
    ("choice", "chat_choice", "parallel"),
    [
        ({"type": "auto"}, "auto", None),
        ({"type": "any"}, "required", None),
        ({"type": "none"}, "none", None),
        (
            {"type": "tool", "name": "get_time"},
            {"type": "function", "function": {"name": "get_time"}},
            None,
        ),
        ({"type": "any", "disable_parallel_tool_use": True}, "required", False),
    ],
)
def test_tool_choice(choice, chat_choice, parallel):
    chat = chat_of(tools=[WEATHER, TIME], tool_choice=choice)
    assert chat.tool_choice == chat_choice
    assert getattr(chat, "parallel_tool_calls", None) is parallel


@pytest.mark.parametrize(
    ("body", "param", "says"),
    [
        ({"tools": [{"type": "bash_20250124", "name": "bash"}]}, "tools[0].type", "bash_20250124"),
        ({"tools": [{"name": "x"}]}, "tools[0].input_schema", "input_schema"),
        ({"tools": [{"name": "no spaces", "input_schema": {}}]}, "tools[0].name", "1-64"),
        (
            {"tools": [WEATHER], "tool_choice": {"type": "tool", "name": "nope"}},
            "tool_choice.name",
            "nope",
        ),
        ({"tools": [WEATHER], "tool_choice": {"type": "maybe"}}, "tool_choice.type", "maybe"),
        ({"tool_choice": {"type": "any"}}, "tool_choice", "tools"),
        ({"thinking": {"type": "enabled", "budget_tokens": 1024}}, "thinking", "thinking"),
        ({"stop_sequences": ["a", "b", "c", "d", "e"]}, "stop_sequences", "At most 4"),
        ({"stop_sequences": [""]}, "stop_sequences[0]", "non-empty"),
        ({"metadata": {"user_id": 7}}, "metadata.user_id", "string"),
        ({"metadata": {"task_id": ["t"]}}, "metadata.task_id", "string"),
        ({"output_config": {"format": {"type": "xml"}}}, "output_config.format", "json_schema"),
        (
            {"output_config": {"format": {"type": "json_schema"}}},
            "output_config.format.schema",
            "schema",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]},
            "messages[0].content[0].type",
            "image",
        ),
        ({"messages": [{"role": "system", "content": "x"}]}, "messages[0]", "role"),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t9"}]}
                ]
            },
            "messages[0].content[0].tool_use_id",
            "t9",
        ),
        (
            {
                "messages": [
                    {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "f"}]}
                ]
            },
            "messages[0].content[0].input",
            "object",
        ),
        (
            {
                "messages": [
                    {"role": "assistant", "content": [{"type": "thinking", "thinking": "."}]}
                ]
            },
            "messages[0].content[0].type",
            "thinking",
        ),
    ],
)
def test_unsupported_input_is_refused_by_name(body, param, says):
    err = refusal(**body)
    assert err.param == param
    assert says in err.message


def test_chat_errors_are_renamed_to_this_api():
    assert rename_param(invalid_request("x", "max_completion_tokens")).param == "max_tokens"
    assert rename_param(invalid_request("x", "stop")).param == "stop_sequences"
    assert rename_param(invalid_request("x", "messages[4].content")).param == "messages"
    assert (
        rename_param(invalid_request("x", "tools[1].function.parameters")).param
        == "tools[1].input_schema"
    )


@pytest.mark.parametrize(
    ("err", "status", "kind"),
    [
        (invalid_request("bad", "max_tokens"), 400, "invalid_request_error"),
        (errors.invalid_api_key("no key"), 401, "authentication_error"),
        (errors.tier_not_allowed("super", ["free"]), 403, "permission_error"),
        (errors.model_not_found("x", ["m"]), 404, "not_found_error"),
        (errors.rate_limited("slow down", 1.0, {}), 429, "rate_limit_error"),
        (errors.insufficient_quota("broke"), 429, "billing_error"),
        (errors.server_error("oops"), 500, "api_error"),
        (errors.engine_error(), 500, "api_error"),
        (errors.overloaded("busy"), 503, "overloaded_error"),
    ],
)
def test_errors_in_anthropic_shape(err, status, kind):
    body = anthropic_body(err)
    assert err.status == status
    assert body["type"] == "error"
    assert body["error"]["type"] == kind
    assert err.message in body["error"]["message"]
    if err.param:
        assert body["error"]["message"].startswith(f"{err.param}: ")


def test_a_message_that_quotes_its_parameter_is_not_prefixed():
    err = invalid_request("Missing required parameter: 'max_tokens'.", "max_tokens")
    assert anthropic_body(err)["error"]["message"] == err.message


def test_only_the_messages_path_speaks_anthropic():
    assert speaks_anthropic("/v1/messages")
    assert speaks_anthropic("/v1/messages/count_tokens")
    assert not speaks_anthropic("/v1/chat/completions")
    assert not speaks_anthropic("/v1/messagesx")
