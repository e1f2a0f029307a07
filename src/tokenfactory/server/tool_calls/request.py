"""The tool side of a chat request, checked: `tools`, `tool_choice`, `parallel_tool_calls`.

Every mistake is a 400 that names the parameter, before anything is reserved.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from tokenfactory.server.errors import APIError, invalid_request

NAME_PATTERN = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
JSON_TYPES = ("object", "array", "string", "number", "integer", "boolean", "null")
Choice = Literal["auto", "none", "required", "named"]


@dataclass(frozen=True)
class ToolSpec:
    name: str
    description: str | None
    parameters: dict[str, Any]  # a JSON schema for the arguments object
    strict: bool

    def as_openai(self) -> dict[str, Any]:
        """The tool as chat templates expect it (OpenAI's shape)."""
        function: dict[str, Any] = {"name": self.name, "parameters": self.parameters}
        if self.description is not None:
            function["description"] = self.description
        return {"type": "function", "function": function}


@dataclass(frozen=True)
class ToolRequest:
    tools: list[ToolSpec]
    choice: Choice
    named: str | None  # the tool `tool_choice` names
    parallel: bool  # several calls in one reply allowed

    @property
    def offered(self) -> bool:
        """The model is told about the tools and its output read for calls."""
        return bool(self.tools) and self.choice != "none"

    @property
    def forced(self) -> bool:
        """The reply must be calls (`required`, or one named tool)."""
        return self.offered and self.choice in ("required", "named")

    def callable_tools(self) -> list[ToolSpec]:
        if self.choice == "named":
            return [t for t in self.tools if t.name == self.named]
        return list(self.tools)


def read_tool_request(
    tools: list[Any] | None, tool_choice: Any, parallel_tool_calls: bool | None
) -> ToolRequest:
    specs = [_tool(i, t) for i, t in enumerate(tools or [])]
    names = [s.name for s in specs]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise invalid_request(
                f"Tool names must be unique: {name!r} is given twice.", f"tools[{i}].function.name"
            )
    choice, named = _choice(tool_choice, names)
    return ToolRequest(specs, choice, named, parallel_tool_calls is not False)


def _tool(i: int, tool: Any) -> ToolSpec:
    where = f"tools[{i}]"
    if not isinstance(tool, dict):
        raise invalid_request(f"Invalid '{where}': a tool is an object.", where)
    if tool.get("type") != "function":
        raise invalid_request(
            f"Invalid '{where}.type': only 'function' tools are supported, got "
            f"{tool.get('type')!r}.",
            f"{where}.type",
        )
    fn = tool.get("function")
    if not isinstance(fn, dict):
        param = f"{where}.function"
        raise invalid_request(f"Missing required parameter: '{param}'.", param)
    name = fn.get("name")
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise invalid_request(
            f"Invalid '{where}.function.name': {name!r} does not match '^[a-zA-Z0-9_-]{{1,64}}$'.",
            f"{where}.function.name",
        )
    description = fn.get("description")
    if description is not None and not isinstance(description, str):
        raise invalid_request(
            f"Invalid '{where}.function.description': a string.", f"{where}.function.description"
        )
    params = fn.get("parameters")
    if params is None:
        params = {"type": "object", "properties": {}}
    param = f"{where}.function.parameters"
    if not isinstance(params, dict):
        raise invalid_request(f"Invalid '{param}': a JSON schema object.", param)
    if params.get("type", "object") != "object":
        raise invalid_request(
            f"Invalid '{param}': the arguments are an object, so the schema's type is 'object'.",
            param,
        )
    check_schema(params, param)
    return ToolSpec(name, description, params, bool(fn.get("strict", False)))


def check_schema(schema: Any, param: str) -> None:
    """A structural check of a JSON schema's common keywords (what a template and a grammar
    read); the grammar compiler checks the rest where a grammar is built from it."""
    if isinstance(schema, bool):
        return
    if not isinstance(schema, dict):
        raise invalid_request(f"Invalid '{param}': a JSON schema is an object.", param)
    kind = schema.get("type")
    kinds = kind if isinstance(kind, list) else [kind] if kind is not None else []
    for k in kinds:
        if k not in JSON_TYPES:
            raise invalid_request(f"Invalid '{param}.type': {k!r} is not a JSON type.", param)
    props = schema.get("properties")
    if props is not None:
        if not isinstance(props, dict):
            raise invalid_request(f"Invalid '{param}.properties': an object of schemas.", param)
        for key, sub in props.items():
            check_schema(sub, f"{param}.properties.{key}")
    required = schema.get("required")
    if required is not None and (
        not isinstance(required, list) or not all(isinstance(r, str) for r in required)
    ):
        raise invalid_request(f"Invalid '{param}.required': a list of names.", param)
    if "items" in schema:
        check_schema(schema["items"], f"{param}.items")
    for word in ("anyOf", "oneOf", "allOf"):
        subs = schema.get(word)
        if subs is not None:
            if not isinstance(subs, list):
                raise invalid_request(f"Invalid '{param}.{word}': a list of schemas.", param)
            for j, sub in enumerate(subs):
                check_schema(sub, f"{param}.{word}[{j}]")
    enum = schema.get("enum")
    if enum is not None and not isinstance(enum, list):
        raise invalid_request(f"Invalid '{param}.enum': a list.", param)


def _choice(tool_choice: Any, names: list[str]) -> tuple[Choice, str | None]:
    if tool_choice is None:
        return "auto", None
    if not names and tool_choice != "none":
        raise invalid_request(
            "Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' are "
            "specified.",
            "tool_choice",
        )
    if tool_choice in ("auto", "none", "required"):
        return tool_choice, None
    if isinstance(tool_choice, dict) and tool_choice.get("type") == "function":
        fn = tool_choice.get("function")
        name = fn.get("name") if isinstance(fn, dict) else None
        if name in names:
            return "named", name
        raise _bad_choice(f"it names {name!r}, which is not one of the tools ({', '.join(names)})")
    raise _bad_choice(
        'it is \'auto\', \'none\', \'required\' or {"type": "function", "function": {"name": ...}}'
    )


def _bad_choice(why: str) -> APIError:
    return invalid_request(f"Invalid value for 'tool_choice': {why}.", "tool_choice")
