"""Tool-calling families: how a model writes calls, and how it is told about tools.

A family is chosen from the model itself (see `choose_family`), never from a flag the caller
must know. Each family has its parser, the text of a call as the model writes it (to render
past calls for templates that cannot), and a system prompt for templates that ignore tools.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from tokenfactory.server.chat_events import OutputParser
from tokenfactory.server.tool_calls.llama3 import PYTHON_TAG, Llama3JsonParser
from tokenfactory.server.tool_calls.request import ToolSpec
from tokenfactory.server.tool_calls.tagged import CLOSE_TAG, OPEN_TAG, hermes_parser, smollm2_parser


@dataclass(frozen=True)
class ToolFamily:
    name: str
    make_parser: Callable[[], OutputParser]
    call_text: Callable[[Sequence[tuple[str, dict[str, Any]]]], str]  # [(name, arguments)]
    result_text: Callable[[str, str], str]  # (tool name, result) -> text the model reads
    format_help: str  # how a call is written, for the tool system prompt

    def system_prompt(self, tools: Sequence[ToolSpec]) -> str:
        listing = "\n".join(json.dumps(t.as_openai(), ensure_ascii=False) for t in tools)
        return (
            "You can call functions (tools) to help answer. The tools you may call are given "
            f"as JSON schemas:\n<tools>\n{listing}\n</tools>\n\n"
            f"To call tools, reply with nothing but the call, in this exact format:\n"
            f"{self.format_help}\nAfter a call you get the results and then answer. If no "
            "tool helps, answer directly without a call."
        )


def _call_json(name: str, arguments: dict[str, Any], args_key: str = "arguments") -> str:
    return json.dumps({"name": name, args_key: arguments}, ensure_ascii=False)


def _hermes_calls(calls: Sequence[tuple[str, dict[str, Any]]]) -> str:
    return "\n".join(f"{OPEN_TAG}\n{_call_json(n, a)}\n{CLOSE_TAG}" for n, a in calls)


def _smollm2_calls(calls: Sequence[tuple[str, dict[str, Any]]]) -> str:
    # spelled as the grammar for forced calls writes them
    inner = ", ".join(_call_json(n, a) for n, a in calls)
    return f"{OPEN_TAG}[{inner}]{CLOSE_TAG}"


def _llama3_calls(calls: Sequence[tuple[str, dict[str, Any]]]) -> str:
    return "; ".join(_call_json(n, a, "parameters") for n, a in calls)


def _tagged_result(name: str, result: str) -> str:
    body = json.dumps({"name": name, "content": result}, ensure_ascii=False)
    return f"<tool_response>\n{body}\n</tool_response>"


def _llama3_result(name: str, result: str) -> str:
    return json.dumps({"name": name, "output": result}, ensure_ascii=False)


HERMES = ToolFamily(
    "hermes",
    hermes_parser,
    _hermes_calls,
    _tagged_result,
    f'{OPEN_TAG}\n{{"name": "<function name>", "arguments": {{<arguments as JSON>}}}}\n'
    f"{CLOSE_TAG}\n(one such block per call)",
)
SMOLLM2 = ToolFamily(
    "smollm2",
    smollm2_parser,
    _smollm2_calls,
    _tagged_result,
    f'{OPEN_TAG}[{{"name": "<function name>", "arguments": {{<arguments as JSON>}}}}]{CLOSE_TAG}\n'
    "(a JSON list, one object per call)",
)
LLAMA3_JSON = ToolFamily(
    "llama3_json",
    Llama3JsonParser,
    _llama3_calls,
    _llama3_result,
    '{"name": "<function name>", "parameters": {<arguments as JSON>}}\n'
    "(several calls separated by '; ')",
)
FAMILIES = {f.name: f for f in (HERMES, SMOLLM2, LLAMA3_JSON)}


@dataclass(frozen=True)
class ModelTraits:
    """What the choice reads: the chat template(s), the model's name and architecture (GGUF
    `general.name` / HF `_name_or_path`), and whether its vocabulary has marker tokens."""

    template: str
    name: str
    architecture: str
    has_token: Callable[[str], bool]


def choose_family(traits: ModelTraits, override: str | None = None) -> ToolFamily:
    """The first rule that matches:
    1. an explicit override (the `TOKENFACTORY_TOOL_PARSER` environment variable), if set;
    2. the template writes `<tool_call>`: hermes (Qwen 2.5/3, Hermes);
    3. the template or vocabulary has `<|python_tag|>`: Llama 3.x JSON;
    4. the model's name says SmolLM2: SmolLM2's list-in-tags format;
    5. otherwise hermes: Qwen models whose template lacks tools, models with a `<tool_call>`
       token, and models nothing is known about (the tool prompt then teaches the format)."""
    if override:
        if override not in FAMILIES:
            raise ValueError(f"unknown tool-call family {override!r}; known: {', '.join(FAMILIES)}")
        return FAMILIES[override]
    if OPEN_TAG in traits.template:
        return HERMES
    if PYTHON_TAG in traits.template or traits.has_token(PYTHON_TAG):
        return LLAMA3_JSON
    if "smollm2" in traits.name.lower().replace(" ", "").replace("-", ""):
        return SMOLLM2
    return HERMES
