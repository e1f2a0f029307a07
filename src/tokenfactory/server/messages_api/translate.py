"""An Anthropic Messages request, read as the chat-completions request the engine serves.

`system` becomes a system message; `tool_use` blocks become an assistant's `tool_calls`
(their `input` object as arguments JSON text); `tool_result` blocks become `role: "tool"`
messages, ahead of any text the same user turn carries (Anthropic puts results first).
`tool_choice` maps as any -> required, tool -> a named function, and
`disable_parallel_tool_use` -> `parallel_tool_calls: false`. What this server cannot do is
refused with a 400 naming the parameter.
"""

from __future__ import annotations

import json
import re
from typing import Any

from pydantic import ValidationError

from tokenfactory.server.errors import APIError, invalid_request
from tokenfactory.server.messages_api.schemas import MessagesRequest
from tokenfactory.server.responses_api.translate import chat_validation_error
from tokenfactory.server.schemas import ChatCompletionRequest
from tokenfactory.server.tool_calls.request import NAME_PATTERN

MAX_STOP_SEQUENCES = 4  # what the engine's stop checker takes per request
# Anthropic's service tiers that leave the choice to us: the key's default tier.
KEY_DEFAULT_TIERS = ("auto", "standard_only")
CHAT_TO_MESSAGES_PARAM = {
    "max_completion_tokens": "max_tokens",
    "stop": "stop_sequences",
    "response_format": "output_config.format",
}


def translate(req: MessagesRequest) -> ChatCompletionRequest:
    _refuse_unsupported(req)
    tools = [_chat_tool(i, t) for i, t in enumerate(req.tools or [])]
    chat: dict[str, Any] = {
        "model": req.model,
        "messages": [*_system(req.system), *_messages(req.messages)],
        "max_tokens": req.max_tokens,
        "stream": bool(req.stream),
        "temperature": req.temperature,
        "top_p": req.top_p,
        "top_k": req.top_k,
        "stop": req.stop_sequences or None,
        "service_tier": None if req.service_tier in KEY_DEFAULT_TIERS else req.service_tier,
        "response_format": _response_format(req.output_config),
    }
    if tools:
        chat["tools"] = tools
        chat.update(_chat_tool_choice(req.tool_choice, tools))
    elif req.tool_choice is not None and req.tool_choice.get("type") not in ("auto", "none"):
        raise invalid_request("tool_choice needs 'tools' to choose from.", "tool_choice")
    if req.metadata:
        chat["user"] = _metadata_text(req.metadata, "user_id")
        task_id = _metadata_text(req.metadata, "task_id")
        if task_id is not None:  # bills the request to a task, as X-Task-Id does
            chat["metadata"] = {"task_id": task_id}
    try:
        return ChatCompletionRequest.model_validate(chat)
    except ValidationError as exc:  # checked above, so not expected: name it in our terms
        raise rename_param(chat_validation_error(exc)) from None


def _metadata_text(metadata: dict[str, Any], key: str) -> str | None:
    value = metadata.get(key)
    if value is not None and not isinstance(value, str):
        raise invalid_request(f"metadata.{key} must be a string.", f"metadata.{key}")
    return value


def rename_param(err: APIError) -> APIError:
    """An error raised on the chat request, naming the parameter as this API's caller sent it.
    Chat's `messages[i]` has no index here (the system message and tool results shift it)."""
    if err.param is None:
        return err
    if err.param.startswith("messages["):
        renamed = "messages"
    else:
        renamed = CHAT_TO_MESSAGES_PARAM.get(err.param, err.param)
        renamed = re.sub(
            r"^tools\[(\d+)\]\.function\.parameters", r"tools[\1].input_schema", renamed
        )
        renamed = re.sub(r"^tools\[(\d+)\]\.function\.", r"tools[\1].", renamed)
    if renamed == err.param:
        return err
    return APIError(err.status, err.message, err.type, err.code, renamed, err.headers)


def _response_format(config: dict[str, Any] | None) -> dict[str, Any] | None:
    """`output_config.format` (a JSON schema the reply must follow) as chat's response_format;
    `output_config.effort` has nothing to tune on a model that does not reason."""
    fmt = (config or {}).get("format")
    if fmt is None:
        return None
    if not isinstance(fmt, dict) or fmt.get("type") != "json_schema":
        raise invalid_request(
            "output_config.format must be {'type': 'json_schema', 'schema': {...}}.",
            "output_config.format",
        )
    if not isinstance(fmt.get("schema"), dict):
        raise invalid_request(
            "output_config.format needs 'schema' as an object.", "output_config.format.schema"
        )
    return {"type": "json_schema", "json_schema": {"name": "output", "schema": fmt["schema"]}}


def _refuse_unsupported(req: MessagesRequest) -> None:
    if req.thinking is not None and req.thinking.get("type") not in ("disabled", None):
        raise invalid_request(
            "Extended thinking is not supported: this model does not reason before answering.",
            "thinking",
        )
    if req.mcp_servers:
        raise invalid_request("MCP servers are not supported by this server.", "mcp_servers")
    if req.container is not None:
        raise invalid_request("Containers are not supported by this server.", "container")
    stops = req.stop_sequences or []
    if len(stops) > MAX_STOP_SEQUENCES:
        raise invalid_request(
            f"At most {MAX_STOP_SEQUENCES} stop_sequences are supported.", "stop_sequences"
        )
    for i, stop in enumerate(stops):
        if not stop:
            raise invalid_request("stop sequences must be non-empty.", f"stop_sequences[{i}]")


# -- tools ---------------------------------------------------------------------------------------


def _chat_tool(i: int, tool: dict[str, Any]) -> dict[str, Any]:
    kind = tool.get("type")
    if kind not in (None, "custom"):
        raise invalid_request(
            f"Tool type {kind!r} is not supported: this server runs no server tools. Declare "
            "your own tools with 'name', 'description' and 'input_schema'.",
            f"tools[{i}].type",
        )
    name = tool.get("name")
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise invalid_request(
            "A tool needs a 'name' of 1-64 letters, digits, '_' or '-'.", f"tools[{i}].name"
        )
    schema = tool.get("input_schema")
    if not isinstance(schema, dict):
        raise invalid_request(
            "A tool needs 'input_schema' as a JSON schema object.", f"tools[{i}].input_schema"
        )
    function: dict[str, Any] = {"name": name, "parameters": schema}
    if tool.get("description") is not None:
        function["description"] = tool["description"]
    return {"type": "function", "function": function}


def _chat_tool_choice(choice: dict[str, Any] | None, tools: list[dict[str, Any]]) -> dict:
    if choice is None:
        return {"tool_choice": "auto"}
    kind = choice.get("type")
    fields: dict[str, Any] = {}
    if choice.get("disable_parallel_tool_use"):
        fields["parallel_tool_calls"] = False
    if kind == "auto":
        fields["tool_choice"] = "auto"
    elif kind == "any":
        fields["tool_choice"] = "required"
    elif kind == "none":
        fields["tool_choice"] = "none"
    elif kind == "tool":
        name = choice.get("name")
        if name not in [t["function"]["name"] for t in tools]:
            raise invalid_request(
                f"tool_choice names tool {name!r}, which is not among the tools.",
                "tool_choice.name",
            )
        fields["tool_choice"] = {"type": "function", "function": {"name": name}}
    else:
        raise invalid_request(
            f"tool_choice type {kind!r} is not one of 'auto', 'any', 'tool', 'none'.",
            "tool_choice.type",
        )
    return fields


# -- messages ------------------------------------------------------------------------------------


def _system(system: str | list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    if system is None:
        return []
    text = system if isinstance(system, str) else _texts(system, "system")
    return [{"role": "system", "content": text}] if text else []


def _messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    tool_use_ids: set[str] = set()
    for i, message in enumerate(messages):
        role = message.get("role")
        content = message.get("content")
        where = f"messages[{i}]"
        if role not in ("user", "assistant"):
            raise invalid_request(f"role must be 'user' or 'assistant'; got {role!r}.", where)
        if isinstance(content, str):
            out.append({"role": role, "content": content})
        elif not isinstance(content, list):
            raise invalid_request(
                "content must be a string or a list of blocks.", f"{where}.content"
            )
        elif role == "assistant":
            out.append(_assistant(content, f"{where}.content", tool_use_ids))
        else:
            out.extend(_user(content, f"{where}.content", tool_use_ids))
    return out


def _assistant(blocks: list[Any], where: str, tool_use_ids: set[str]) -> dict[str, Any]:
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for j, block in enumerate(blocks):
        kind = _kind(block)
        if kind == "text":
            texts.append(_block_text(block, f"{where}[{j}]"))
        elif kind == "tool_use":
            calls.append(_tool_use(block, f"{where}[{j}]"))
            tool_use_ids.add(calls[-1]["id"])
        else:
            raise invalid_request(
                f"Assistant content block type {kind!r} is not supported: use 'text' or "
                "'tool_use'.",
                f"{where}[{j}].type",
            )
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) or None}
    if calls:
        message["tool_calls"] = calls
    return message


def _user(blocks: list[Any], where: str, tool_use_ids: set[str]) -> list[dict[str, Any]]:
    """A user turn: its tool results as tool messages, then its text as one user message."""
    results: list[dict[str, Any]] = []
    texts: list[str] = []
    for j, block in enumerate(blocks):
        kind = _kind(block)
        if kind == "text":
            texts.append(_block_text(block, f"{where}[{j}]"))
        elif kind == "tool_result":
            results.append(_tool_result(block, f"{where}[{j}]", tool_use_ids))
        else:
            raise invalid_request(
                f"Content block type {kind!r} is not supported: this model reads text "
                "('text' and 'tool_result' blocks).",
                f"{where}[{j}].type",
            )
    if texts or not results:
        results.append({"role": "user", "content": "".join(texts)})
    return results


def _tool_use(block: dict[str, Any], where: str) -> dict[str, Any]:
    for name, kind, said in (
        ("id", str, "a string"),
        ("name", str, "a string"),
        ("input", dict, "an object"),
    ):
        if not isinstance(block.get(name), kind):
            raise invalid_request(f"A tool_use block needs '{name}' as {said}.", f"{where}.{name}")
    arguments = json.dumps(block["input"], ensure_ascii=False)
    return {
        "id": block["id"],
        "type": "function",
        "function": {"name": block["name"], "arguments": arguments},
    }


def _tool_result(block: dict[str, Any], where: str, tool_use_ids: set[str]) -> dict[str, Any]:
    use_id = block.get("tool_use_id")
    if not isinstance(use_id, str):
        raise invalid_request("A tool_result block needs 'tool_use_id'.", f"{where}.tool_use_id")
    if use_id not in tool_use_ids:
        raise invalid_request(
            f"No tool_use block with id {use_id!r} comes before this tool_result.",
            f"{where}.tool_use_id",
        )
    content = block.get("content", "")
    text = content if isinstance(content, str) else _texts(content, f"{where}.content")
    if block.get("is_error"):
        # Chat has no error flag on a tool message: say it in the text the model reads.
        text = f"Error: {text}"
    return {"role": "tool", "tool_call_id": use_id, "content": text}


def _texts(blocks: Any, where: str) -> str:
    if not isinstance(blocks, list):
        raise invalid_request("must be a string or a list of text blocks.", where)
    texts = []
    for j, block in enumerate(blocks):
        if _kind(block) != "text":
            raise invalid_request(
                f"Block type {_kind(block)!r} is not supported here: this model reads text.",
                f"{where}[{j}].type",
            )
        texts.append(_block_text(block, f"{where}[{j}]"))
    return "".join(texts)


def _kind(block: Any) -> str | None:
    return block.get("type") if isinstance(block, dict) else None


def _block_text(block: dict[str, Any], where: str) -> str:
    text = block.get("text")
    if not isinstance(text, str):
        raise invalid_request("A text block needs 'text' as a string.", f"{where}.text")
    return text
