"""Turn a GrammarSpec into llguidance's grammar text, and say why one cannot be served."""

from __future__ import annotations

from typing import TYPE_CHECKING

import llguidance

from tokenfactory.engine.constraints.spec import GrammarSpec

if TYPE_CHECKING:  # the type lives in llguidance's stubs only
    from llguidance._lib import JsonCompileOptions

# Compact JSON with the separators json.dumps writes: one spelling per value, so a small
# model cannot wander into runs of whitespace, and the text reads the way models saw JSON.
JSON_OPTIONS: JsonCompileOptions = {
    "whitespace_flexible": False,
    "item_separator": ", ",
    "key_separator": ": ",
}

_ANY_OBJECT = '{"type": "object"}'


def grammar_text(spec: GrammarSpec) -> str:
    """llguidance's serialized grammar for `spec` (not yet checked: see `grammar_error`)."""
    if spec.kind == "lark":
        return llguidance.LLMatcher.grammar_from_lark(spec.source)
    source = _ANY_OBJECT if spec.kind == "json_object" else spec.source
    return llguidance.LLMatcher.grammar_from_json_schema(source, defaults=JSON_OPTIONS)


def grammar_error(spec: GrammarSpec, tokenizer: llguidance.LLTokenizer | None = None) -> str | None:
    """None when `spec` compiles, else the grammar engine's reason, e.g. `Unimplemented keys:
    ["not"]`. With a tokenizer it also checks what depends on the vocabulary."""
    try:
        text = grammar_text(spec)
    except ValueError as exc:
        return str(exc)
    is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(text, tokenizer)
    if is_error:
        return messages[0].strip() if messages else "the grammar is invalid"
    return None
