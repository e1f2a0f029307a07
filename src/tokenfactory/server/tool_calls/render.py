"""Conversations with tools, made ready for the model's own chat template.

Templates differ in what they understand: Qwen's renders `tools`, assistant `tool_calls` and
`role: "tool"` itself; SmolLM2's renders only role and content. So: arguments JSON text
becomes a dict (what templates that render calls expect); where the template ignores tools,
the family's tool system prompt is added; where it does not render calls or tool results,
they become text in the family's format.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from tokenfactory.server.errors import invalid_request
from tokenfactory.server.tool_calls.families import ToolFamily
from tokenfactory.server.tool_calls.request import ToolRequest


@dataclass(frozen=True)
class TemplateAbilities:
    """What a chat template renders by itself, read from its source."""

    tools: bool  # it renders the `tools` list
    tool_calls: bool  # it renders assistant messages' `tool_calls`
    tool_results: bool  # it renders `role: "tool"` messages

    @classmethod
    def of(cls, template: str) -> TemplateAbilities:
        return cls(
            tools="tools" in template,
            tool_calls="tool_calls" in template,
            tool_results="'tool'" in template or '"tool"' in template,
        )


@dataclass(frozen=True)
class ToolPrompt:
    """What to hand the template: the messages, and the tools (None: not rendered by it)."""

    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None


def tool_prompt(
    messages: list[dict[str, Any]],
    request: ToolRequest,
    family: ToolFamily,
    abilities: TemplateAbilities,
) -> ToolPrompt:
    names = _call_names(messages)
    out = [_message(i, m, family, abilities, names) for i, m in enumerate(messages)]
    if not request.offered:
        return ToolPrompt(out, None)
    tools = [t.as_openai() for t in request.tools]
    if abilities.tools:
        return ToolPrompt(out, tools)
    return ToolPrompt(_with_system(out, family.system_prompt(request.tools)), None)


def _call_names(messages: list[dict[str, Any]]) -> dict[str, str]:
    """Tool name by call id, from the assistant turns, to say whose result a message is."""
    names: dict[str, str] = {}
    for m in messages:
        for call in m.get("tool_calls") or []:
            fn = call.get("function") if isinstance(call, dict) else None
            if isinstance(fn, dict) and isinstance(call.get("id"), str):
                names[call["id"]] = str(fn.get("name", ""))
    return names


def _message(
    i: int,
    m: dict[str, Any],
    family: ToolFamily,
    abilities: TemplateAbilities,
    names: dict[str, str],
) -> dict[str, Any]:
    if m.get("tool_calls"):
        calls = [_call(i, j, c) for j, c in enumerate(m["tool_calls"])]
        if abilities.tool_calls:
            return {**m, "tool_calls": calls}
        pairs = [(c["function"]["name"], c["function"]["arguments"]) for c in calls]
        text = family.call_text(pairs)
        content = m.get("content") or ""
        rest = {k: v for k, v in m.items() if k != "tool_calls"}
        return {**rest, "content": f"{content}\n{text}" if content else text}
    if m.get("role") == "tool":
        name = m.get("name") or names.get(m.get("tool_call_id") or "", "")
        if abilities.tool_results:
            return {**m, "name": name}  # some templates say whose result it is by name
        return {"role": "user", "content": family.result_text(name, m.get("content") or "")}
    return m


def _call(i: int, j: int, call: Any) -> dict[str, Any]:
    where = f"messages[{i}].tool_calls[{j}]"
    fn = call.get("function") if isinstance(call, dict) else None
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
        raise invalid_request(
            f'Invalid \'{where}\': a call is {{"id", "type": "function", "function": '
            '{"name", "arguments"}}.',
            where,
        )
    args = fn.get("arguments", "{}")
    if isinstance(args, str):
        try:
            args = json.loads(args or "{}")
        except json.JSONDecodeError:
            raise invalid_request(
                f"Invalid '{where}.function.arguments': not JSON text.",
                f"{where}.function.arguments",
            ) from None
    if not isinstance(args, dict):
        raise invalid_request(
            f"Invalid '{where}.function.arguments': the arguments are a JSON object.",
            f"{where}.function.arguments",
        )
    out = {**call, "type": "function", "function": {**fn, "arguments": args}}
    return out


def _with_system(messages: list[dict[str, Any]], prompt: str) -> list[dict[str, Any]]:
    """The tool prompt after the caller's system prompt, or as the first message."""
    if messages and messages[0].get("role") == "system":
        first = messages[0]
        content = first.get("content") or ""
        joined = f"{content}\n\n{prompt}" if content else prompt
        return [{**first, "content": joined}, *messages[1:]]
    return [{"role": "system", "content": prompt}, *messages]
