"""A Responses API request, read as the chat-completions request the engine already serves.

`input` items become chat messages (function calls as an assistant's `tool_calls`, their
outputs as `role: "tool"` messages), flat function tools become OpenAI chat tools, and
`text.format` becomes `response_format`. What this server cannot do is refused here with a
400 that names the parameter; nothing is stored, so nothing may refer to an earlier response.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from tokenfactory.server.errors import APIError, invalid_request
from tokenfactory.server.responses_api.schemas import ResponsesRequest
from tokenfactory.server.schemas import ChatCompletionRequest
from tokenfactory.server.tool_calls.request import NAME_PATTERN

_ROLES = ("user", "assistant", "system", "developer")
_TEXT_PARTS = ("input_text", "output_text", "text")
_HARMLESS_INCLUDES = ("reasoning.encrypted_content",)  # nothing to include: no reasoning
# A chat-completions parameter as this API calls it, for errors raised past translation.
CHAT_TO_RESPONSES_PARAM = {
    "max_completion_tokens": "max_output_tokens",
    "max_tokens": "max_output_tokens",
    "response_format": "text.format",
}


@dataclass(frozen=True)
class ResponsesCall:
    """What one Responses request runs: the chat request, and the settings its response
    object repeats back (OpenAI's response echoes the request's configuration)."""

    chat: ChatCompletionRequest
    echo: dict[str, Any]


def translate(req: ResponsesRequest) -> ResponsesCall:
    _refuse_unsupported(req)
    tools = [_chat_tool(i, t) for i, t in enumerate(req.tools or [])]
    tool_choice, tools = _chat_tool_choice(req.tool_choice, tools)
    messages = _messages(req)
    chat: dict[str, Any] = {
        "model": req.model,
        "messages": messages,
        "stream": bool(req.stream),
        "temperature": req.temperature,
        "top_p": req.top_p,
        "max_completion_tokens": req.max_output_tokens,
        "user": req.user or req.safety_identifier,
        "service_tier": req.service_tier,
        "prompt_cache_key": req.prompt_cache_key,
        "response_format": _response_format(req),
    }
    if tools:
        chat["tools"] = tools
        chat["tool_choice"] = tool_choice
        if req.parallel_tool_calls is not None:
            chat["parallel_tool_calls"] = req.parallel_tool_calls
    if req.metadata is not None:
        chat["metadata"] = req.metadata
    try:
        chat_request = ChatCompletionRequest.model_validate(chat)
    except ValidationError as exc:  # checked above, so not expected: name it in our terms
        raise rename_param(chat_validation_error(exc)) from None
    return ResponsesCall(chat_request, _echo(req))


def chat_validation_error(exc: ValidationError) -> APIError:
    """A chat request's validation error, naming the chat parameter (to be renamed)."""
    first = exc.errors()[0]
    param = ""
    for part in first["loc"]:
        param += f"[{part}]" if isinstance(part, int) else ("." if param else "") + str(part)
    return invalid_request(f"Invalid '{param}': {first['msg']}.", param or None)


def rename_param(err: APIError) -> APIError:
    """An error raised on the chat request, naming the parameter as this API's caller sent it.
    Chat's `messages[i]` has no index in `input` (instructions and merged calls shift it)."""
    if err.param is None:
        return err
    if err.param == "messages" or err.param.startswith("messages["):
        renamed = "input"
    else:
        renamed = CHAT_TO_RESPONSES_PARAM.get(err.param, err.param)
        renamed = re.sub(r"^tools\[(\d+)\]\.function\.", r"tools[\1].", renamed)
    if renamed == err.param:
        return err
    return APIError(err.status, err.message, err.type, err.code, renamed, err.headers)


# -- refusals ------------------------------------------------------------------------------------


def _refuse_unsupported(req: ResponsesRequest) -> None:
    if req.previous_response_id is not None:
        raise invalid_request(
            "This server stores no responses, so previous_response_id cannot be used: send "
            "the whole conversation in 'input' (earlier output items included).",
            "previous_response_id",
        )
    if req.conversation is not None:
        raise invalid_request(
            "This server stores no conversations: send the whole conversation in 'input'.",
            "conversation",
        )
    if req.prompt is not None:
        raise invalid_request(
            "Stored prompt templates are not supported: send 'instructions' and 'input'.",
            "prompt",
        )
    if req.background:
        raise invalid_request(
            "Background responses are not supported: this server keeps no responses to poll.",
            "background",
        )
    if req.truncation not in (None, "disabled"):
        raise invalid_request(
            "Only truncation 'disabled' is supported: an input longer than the context window "
            "is refused, never cut.",
            "truncation",
        )
    if req.top_logprobs:
        raise invalid_request("top_logprobs is not supported on this endpoint.", "top_logprobs")
    for i, item in enumerate(req.include or []):
        if item not in _HARMLESS_INCLUDES:
            raise invalid_request(f"include value {item!r} is not supported.", f"include[{i}]")
    if isinstance(req.input, list) and not req.input:
        raise invalid_request("'input' must hold at least one item.", "input")


# -- tools ---------------------------------------------------------------------------------------


def _chat_tool(i: int, tool: dict[str, Any]) -> dict[str, Any]:
    kind = tool.get("type")
    if kind != "function":
        raise invalid_request(
            f"Tool type {kind!r} is not supported: this server runs no hosted tools. Declare "
            "your own tools as {'type': 'function', 'name': ..., 'parameters': {...}}.",
            f"tools[{i}].type",
        )
    name = tool.get("name")
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise invalid_request(
            "A function tool needs a 'name' of 1-64 letters, digits, '_' or '-'.",
            f"tools[{i}].name",
        )
    params = tool.get("parameters")
    if params is not None and not isinstance(params, dict):
        raise invalid_request(
            "'parameters' must be a JSON schema object.", f"tools[{i}].parameters"
        )
    function: dict[str, Any] = {"name": name, "parameters": params or {"type": "object"}}
    if tool.get("description") is not None:
        function["description"] = tool["description"]
    if tool.get("strict") is not None:
        function["strict"] = tool["strict"]
    return {"type": "function", "function": function}


def _chat_tool_choice(
    choice: str | dict[str, Any] | None, tools: list[dict[str, Any]]
) -> tuple[Any, list[dict[str, Any]]]:
    """Chat's tool_choice, and the tools offered (`allowed_tools` narrows them)."""
    if choice is None:
        return "auto", tools
    if isinstance(choice, str):
        if choice not in ("auto", "none", "required"):
            raise invalid_request(
                f"tool_choice {choice!r} is not one of 'auto', 'none', 'required'.", "tool_choice"
            )
        if choice == "required" and not tools:
            raise invalid_request("tool_choice 'required' needs at least one tool.", "tool_choice")
        return choice, tools
    names = [t["function"]["name"] for t in tools]
    kind = choice.get("type")
    if kind == "function":
        name = choice.get("name")
        if name not in names:
            raise invalid_request(
                f"tool_choice names function {name!r}, which is not among the tools.",
                "tool_choice.name",
            )
        return {"type": "function", "function": {"name": name}}, tools
    if kind == "allowed_tools":
        return _allowed_tools(choice, tools, names)
    raise invalid_request(
        f"tool_choice type {kind!r} is not supported: use 'auto', 'none', 'required', "
        "{'type': 'function', 'name': ...} or {'type': 'allowed_tools', ...}.",
        "tool_choice",
    )


def _allowed_tools(
    choice: dict[str, Any], tools: list[dict[str, Any]], names: list[str]
) -> tuple[Any, list[dict[str, Any]]]:
    mode = choice.get("mode", "auto")
    if mode not in ("auto", "required"):
        raise invalid_request(
            "allowed_tools mode must be 'auto' or 'required'.", "tool_choice.mode"
        )
    allowed: list[str] = []
    for j, ref in enumerate(choice.get("tools") or []):
        name = ref.get("name") if isinstance(ref, dict) else None
        if not isinstance(ref, dict) or ref.get("type") != "function" or name not in names:
            raise invalid_request(
                "allowed_tools may only list function tools declared in 'tools'.",
                f"tool_choice.tools[{j}]",
            )
        allowed.append(name)
    if not allowed:
        raise invalid_request("allowed_tools must list at least one tool.", "tool_choice.tools")
    return mode, [t for t in tools if t["function"]["name"] in allowed]


# -- input ---------------------------------------------------------------------------------------


def _messages(req: ResponsesRequest) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    if req.instructions:
        messages.append({"role": "system", "content": req.instructions})
    if isinstance(req.input, str):
        messages.append({"role": "user", "content": req.input})
        return messages
    call_ids: set[str] = set()
    for i, item in enumerate(req.input):
        kind = item.get("type", "message")
        if kind == "message":
            messages.append(_message(i, item))
        elif kind == "function_call":
            call = _function_call(i, item)
            call_ids.add(call["id"])
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)  # same turn as the text before
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            messages.append(_function_output(i, item, call_ids))
        elif kind == "item_reference":
            raise invalid_request(
                "This server stores no items, so item_reference cannot be resolved: send the "
                "item itself.",
                f"input[{i}]",
            )
        else:
            raise invalid_request(
                f"Input item type {kind!r} is not supported: use 'message', 'function_call' "
                "or 'function_call_output'.",
                f"input[{i}].type",
            )
    return messages


def _message(i: int, item: dict[str, Any]) -> dict[str, Any]:
    role = item.get("role")
    if role not in _ROLES:
        raise invalid_request(
            f"role must be one of {', '.join(_ROLES)}; got {role!r}.", f"input[{i}].role"
        )
    return {"role": role, "content": _text(item.get("content"), f"input[{i}].content")}


def _text(content: Any, param: str) -> str:
    """A message's content as one text: a string, or text parts joined."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise invalid_request("content must be a string or a list of text parts.", param)
    texts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "refusal" and isinstance(part.get("refusal"), str):
            texts.append(part["refusal"])
            continue
        if kind not in _TEXT_PARTS or not isinstance(part.get("text"), str):
            raise invalid_request(
                f"content part type {kind!r} is not supported: this model reads text "
                "('input_text' or 'output_text' parts).",
                f"{param}[{j}]",
            )
        texts.append(part["text"])
    return "".join(texts)


def _function_call(i: int, item: dict[str, Any]) -> dict[str, Any]:
    for field in ("call_id", "name", "arguments"):
        if not isinstance(item.get(field), str):
            raise invalid_request(
                f"A function_call item needs '{field}' as a string.", f"input[{i}].{field}"
            )
    return {
        "id": item["call_id"],
        "type": "function",
        "function": {"name": item["name"], "arguments": item["arguments"]},
    }


def _function_output(i: int, item: dict[str, Any], call_ids: set[str]) -> dict[str, Any]:
    call_id = item.get("call_id")
    if not isinstance(call_id, str):
        raise invalid_request(
            "A function_call_output item needs 'call_id' as a string.", f"input[{i}].call_id"
        )
    if call_id not in call_ids:
        raise invalid_request(
            f"No function_call item with call_id {call_id!r} comes before this output: send "
            "the call too (this server stores no earlier responses).",
            f"input[{i}].call_id",
        )
    output = _text(item.get("output"), f"input[{i}].output")
    return {"role": "tool", "tool_call_id": call_id, "content": output}


# -- output format -------------------------------------------------------------------------------


def _response_format(req: ResponsesRequest) -> dict[str, Any] | None:
    fmt = req.text.format if req.text is not None else None
    if fmt is None:
        return None
    kind = fmt.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        if not isinstance(fmt.get("schema"), dict):
            raise invalid_request(
                "A json_schema format needs 'schema' as an object.", "text.format"
            )
        schema = {k: fmt[k] for k in ("name", "schema", "strict", "description") if k in fmt}
        schema.setdefault("name", "response")
        return {"type": "json_schema", "json_schema": schema}
    raise invalid_request(
        f"text.format type {kind!r} is not one of 'text', 'json_object', 'json_schema'.",
        "text.format",
    )


def _echo(req: ResponsesRequest) -> dict[str, Any]:
    """The request's settings as the response object reports them."""
    return {
        "model": req.model,
        "instructions": req.instructions,
        "tools": req.tools or [],
        "tool_choice": req.tool_choice if req.tool_choice is not None else "auto",
        "parallel_tool_calls": req.parallel_tool_calls is not False,
        "temperature": 1.0 if req.temperature is None else req.temperature,
        "top_p": 1.0 if req.top_p is None else req.top_p,
        "max_output_tokens": req.max_output_tokens,
        "metadata": req.metadata or {},
        "text": {"format": (req.text.format if req.text and req.text.format else {"type": "text"})},
        "reasoning": {
            "effort": req.reasoning.effort if req.reasoning else None,
            "summary": req.reasoning.summary if req.reasoning else None,
        },
        "user": req.user,
        "prompt_cache_key": req.prompt_cache_key,
        "store": False,  # nothing is kept, whatever was asked
        "truncation": "disabled",
        "previous_response_id": None,
    }
