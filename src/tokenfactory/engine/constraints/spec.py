"""GrammarSpec: what a constrained request's output must match, as plain data.

The engine compiles it for the grammar engine; the server builds it from `response_format`
or from tools. It carries text only, so it is hashable and can be logged or cached by value.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from tokenfactory.engine.errors import InvalidRequestError

GrammarKind = Literal["json_schema", "json_object", "lark"]
GRAMMAR_KINDS: tuple[str, ...] = ("json_schema", "json_object", "lark")


@dataclass(frozen=True)
class GrammarSpec:
    """`kind` says how to read `source`:

    - "json_schema": `source` is a JSON schema's text;
    - "json_object": any JSON object, `source` is "";
    - "lark": a grammar in llguidance's Lark dialect, where `%json { ...schema... }` embeds a
      JSON schema (e.g. `start: "<tool_call>" %json {...} "</tool_call>"`).
    """

    kind: GrammarKind
    source: str = ""

    def __post_init__(self) -> None:
        if self.kind not in GRAMMAR_KINDS:
            raise InvalidRequestError(
                f"grammar kind must be one of {', '.join(GRAMMAR_KINDS)}, got {self.kind!r}",
                "grammar",
            )
        if not isinstance(self.source, str):
            raise InvalidRequestError("a grammar's source must be text", "grammar")
        if self.kind == "json_object" and self.source:
            raise InvalidRequestError("a json_object grammar has no source", "grammar")
        if self.kind == "lark" and not self.source.strip():
            raise InvalidRequestError("a Lark grammar cannot be empty", "grammar")
        if self.kind == "json_schema":
            try:
                schema = json.loads(self.source)
            except ValueError:
                raise InvalidRequestError("a JSON schema must be JSON text", "grammar") from None
            if not isinstance(schema, dict | bool):
                raise InvalidRequestError(
                    "a JSON schema must be an object (or true/false)", "grammar"
                )

    @classmethod
    def json_schema(cls, schema: dict[str, Any]) -> GrammarSpec:
        return cls("json_schema", json.dumps(schema, separators=(",", ":"), sort_keys=False))

    @classmethod
    def json_object(cls) -> GrammarSpec:
        return cls("json_object", "")

    @classmethod
    def lark(cls, text: str) -> GrammarSpec:
        return cls("lark", text)
