"""GrammarSpec: constructors, validation, and the grammar engine's verdict on it."""

from __future__ import annotations

import json

import pytest

from tokenfactory.engine.constraints.compile import grammar_error
from tokenfactory.engine.constraints.spec import GrammarSpec
from tokenfactory.engine.errors import InvalidRequestError
from tokenfactory.engine.sampling_params import SamplingParams


def test_constructors_fill_kind_and_source():
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    spec = GrammarSpec.json_schema(schema)
    assert spec.kind == "json_schema"
    assert json.loads(spec.source) == schema
    assert GrammarSpec.json_object() == GrammarSpec("json_object", "")
    assert GrammarSpec.lark('start: "a"').source == 'start: "a"'


def test_specs_are_hashable_values():
    a = GrammarSpec.json_schema({"type": "string"})
    b = GrammarSpec.json_schema({"type": "string"})
    assert a == b and hash(a) == hash(b)


@pytest.mark.parametrize(
    "kind,source",
    [
        ("regex", "a+"),
        ("json_schema", "{not json"),
        ("json_schema", "[1, 2]"),
        ("json_object", "{}"),
        ("lark", "  "),
    ],
)
def test_malformed_specs_are_refused(kind, source):
    with pytest.raises(InvalidRequestError) as info:
        GrammarSpec(kind, source)  # type: ignore[arg-type]
    assert info.value.param == "grammar"


def test_sampling_params_carry_a_grammar():
    spec = GrammarSpec.json_object()
    assert SamplingParams(grammar=spec).grammar is spec
    assert SamplingParams().grammar is None
    with pytest.raises(InvalidRequestError) as info:
        SamplingParams(grammar={"type": "json_object"})  # type: ignore[arg-type]
    assert info.value.param == "grammar"


def test_grammar_engine_accepts_supported_grammars():
    assert grammar_error(GrammarSpec.json_object()) is None
    schema = {
        "type": "object",
        "title": "Person",
        "properties": {
            "name": {"type": "string", "maxLength": 20, "description": "who"},
            "age": {"type": "integer", "minimum": 0, "maximum": 150},
            "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 3},
        },
        "required": ["name"],
        "additionalProperties": False,
    }
    assert grammar_error(GrammarSpec.json_schema(schema)) is None
    tool = 'start: "<tool_call>" %json {"type": "object"} "</tool_call>"'
    assert grammar_error(GrammarSpec.lark(tool)) is None


@pytest.mark.parametrize(
    "schema,word",
    [
        ({"not": {"type": "string"}}, "not"),
        ({"type": "array", "uniqueItems": True}, "uniqueItems"),
        ({"type": "string", "format": "no-such-format"}, "no-such-format"),
        ({"$ref": "#/$defs/missing"}, "missing"),
        ({"type": "objekt"}, "objekt"),
    ],
)
def test_grammar_engine_names_what_it_cannot_serve(schema, word):
    why = grammar_error(GrammarSpec.json_schema(schema))
    assert why is not None and word in why


def test_bad_lark_is_reported():
    why = grammar_error(GrammarSpec.lark("start: undefined_rule"))
    assert why is not None and "undefined_rule" in why
