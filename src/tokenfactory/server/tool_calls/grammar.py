"""The grammar that holds a reply to tool calls, for `tool_choice` "required" or a named tool.

Written in llguidance's Lark dialect: each tool's call is its fixed prefix (the family's
markers and the name) and its parameters schema embedded with `%json`; `required` is a union
over the tools; `parallel_tool_calls: false` allows exactly one call.
"""

from __future__ import annotations

import json
from typing import Any

from tokenfactory.engine.constraints.spec import GrammarSpec
from tokenfactory.server.tool_calls.families import ToolFamily
from tokenfactory.server.tool_calls.request import ToolRequest, ToolSpec
from tokenfactory.server.tool_calls.tagged import CLOSE_TAG, OPEN_TAG

# The JSON inside a call as json.dumps writes it: one spelling, no runs of whitespace.
_COMPACT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


def _literal(text: str) -> str:
    return json.dumps(text)  # a Lark string literal: double quotes, JSON escapes


def _schema(tool: ToolSpec) -> str:
    schema: dict[str, Any] = {**tool.parameters, "x-guidance": _COMPACT}
    return json.dumps(schema, ensure_ascii=False)


def tool_call_grammar(request: ToolRequest, family: ToolFamily) -> GrammarSpec:
    tools = request.callable_tools()
    args_key = "parameters" if family.name == "llama3_json" else "arguments"
    rules = []
    for i, tool in enumerate(tools):
        prefix = _literal(f'{{"name": "{tool.name}", "{args_key}": ')
        rules.append(f'call_{i}: {prefix} args_{i} "}}"')
        rules.append(f"args_{i}: %json {_schema(tool)}")
    rules.append("call: " + " | ".join(f"call_{i}" for i in range(len(tools))))
    if family.name == "hermes":
        one = f"{_literal(OPEN_TAG + chr(10))} call {_literal(chr(10) + CLOSE_TAG)}"
        start = f"{one} ({_literal(chr(10))} {one})*" if request.parallel else one
    elif family.name == "smollm2":
        calls = f"call ({_literal(', ')} call)*" if request.parallel else "call"
        start = f"{_literal(OPEN_TAG + '[')} {calls} {_literal(']' + CLOSE_TAG)}"
    else:
        start = f"call ({_literal('; ')} call)*" if request.parallel else "call"
    return GrammarSpec.lark("\n".join([f"start: {start}", *rules]) + "\n")
