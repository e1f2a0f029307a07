"""OpenAI's `response_format` as a grammar for constrained decoding, checked before admission.

`grammar_for_response_format` reads the request's shape; `check_grammar` compiles a grammar
with the grammar engine so an unsupported schema is a 400 naming the parameter, never a failure
inside the engine. Both serve any route that constrains output (chat, tools, Responses).
"""

from __future__ import annotations

import re
from typing import Any

from tokenfactory.engine.constraints.compile import grammar_error
from tokenfactory.engine.constraints.spec import GrammarSpec
from tokenfactory.server.errors import invalid_request

PARAM = "response_format"
_SCHEMA_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def grammar_for_response_format(response_format: dict[str, Any] | None) -> GrammarSpec | None:
    """None for plain text; a GrammarSpec for `json_object` and `json_schema`.

    OpenAI's shapes: `{"type": "text"}`, `{"type": "json_object"}`, `{"type": "json_schema",
    "json_schema": {"name": ..., "schema": {...}, "strict": bool, "description": ...}}`.
    Output is held to the schema whether or not `strict` is set.
    """
    if response_format is None:
        return None
    if not isinstance(response_format, dict):
        raise invalid_request("response_format must be an object", PARAM)
    kind = response_format.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return GrammarSpec.json_object()
    if kind == "json_schema":
        return _json_schema(response_format.get("json_schema"))
    raise invalid_request(
        f"response_format.type must be 'text', 'json_object' or 'json_schema', got {kind!r}",
        f"{PARAM}.type",
    )


def _json_schema(body: Any) -> GrammarSpec:
    param = f"{PARAM}.json_schema"
    if not isinstance(body, dict):
        raise invalid_request(
            "response_format of type 'json_schema' needs a 'json_schema' object", param
        )
    name = body.get("name")
    if not isinstance(name, str) or not _SCHEMA_NAME.match(name):
        raise invalid_request(
            "json_schema.name is required: 1 to 64 letters, digits, '_' or '-'", f"{param}.name"
        )
    strict = body.get("strict")
    if strict is not None and not isinstance(strict, bool):
        raise invalid_request("json_schema.strict must be a boolean", f"{param}.strict")
    schema = body.get("schema")
    if schema is None:
        return GrammarSpec.json_object()
    if not isinstance(schema, dict):
        raise invalid_request("json_schema.schema must be a JSON schema object", f"{param}.schema")
    return GrammarSpec.json_schema(schema)


def check_grammar(spec: GrammarSpec, param: str) -> None:
    """Raise a 400 naming `param` when the grammar engine cannot serve `spec`."""
    why = grammar_error(spec)
    if why is None:
        return
    if spec.kind == "lark":
        raise invalid_request(f"the grammar is not supported: {why}", param)
    raise invalid_request(f"unsupported JSON schema feature: {why}", param)


def response_format_grammar(response_format: dict[str, Any] | None) -> GrammarSpec | None:
    """The request's grammar, checked: what a route passes into SamplingParams."""
    spec = grammar_for_response_format(response_format)
    if spec is not None:
        check_grammar(spec, PARAM)
    return spec
