"""response_format -> GrammarSpec, and the 400s for shapes and schemas that cannot be served."""

from __future__ import annotations

import json

import pytest

from tokenfactory.engine.constraints.spec import GrammarSpec
from tokenfactory.server.errors import APIError
from tokenfactory.server.prepare import prepare_chat
from tokenfactory.server.schemas import ChatCompletionRequest
from tokenfactory.server.structured_output import (
    check_grammar,
    grammar_for_response_format,
    response_format_grammar,
)

SCHEMA = {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]}


def test_text_and_absent_mean_no_grammar():
    assert grammar_for_response_format(None) is None
    assert grammar_for_response_format({"type": "text"}) is None


def test_json_object():
    assert grammar_for_response_format({"type": "json_object"}) == GrammarSpec.json_object()


def test_json_schema_carries_the_schema():
    spec = grammar_for_response_format(
        {"type": "json_schema", "json_schema": {"name": "point", "schema": SCHEMA, "strict": True}}
    )
    assert spec is not None and spec.kind == "json_schema"
    assert json.loads(spec.source) == SCHEMA


def test_json_schema_without_schema_is_any_object():
    spec = grammar_for_response_format({"type": "json_schema", "json_schema": {"name": "any"}})
    assert spec == GrammarSpec.json_object()


@pytest.mark.parametrize(
    "response_format,param",
    [
        ("json", "response_format"),
        ({"type": "xml"}, "response_format.type"),
        ({}, "response_format.type"),
        ({"type": "json_schema"}, "response_format.json_schema"),
        (
            {"type": "json_schema", "json_schema": {"schema": SCHEMA}},
            "response_format.json_schema.name",
        ),
        (
            {"type": "json_schema", "json_schema": {"name": "a b", "schema": SCHEMA}},
            "response_format.json_schema.name",
        ),
        (
            {"type": "json_schema", "json_schema": {"name": "a", "schema": [1]}},
            "response_format.json_schema.schema",
        ),
        (
            {
                "type": "json_schema",
                "json_schema": {"name": "a", "schema": SCHEMA, "strict": "yes"},
            },
            "response_format.json_schema.strict",
        ),
    ],
)
def test_bad_shapes_are_400s_naming_the_param(response_format, param):
    with pytest.raises(APIError) as info:
        grammar_for_response_format(response_format)
    assert info.value.status == 400
    assert info.value.param == param


def test_unsupported_schema_feature_is_a_400_naming_it():
    rf = {"type": "json_schema", "json_schema": {"name": "a", "schema": {"not": {}}}}
    with pytest.raises(APIError) as info:
        response_format_grammar(rf)
    err = info.value
    assert err.status == 400 and err.param == "response_format"
    assert "unsupported JSON schema feature" in err.message and "not" in err.message


def test_check_grammar_names_the_callers_param():
    with pytest.raises(APIError) as info:
        check_grammar(GrammarSpec.lark("start: nowhere"), "tools")
    assert info.value.param == "tools" and "nowhere" in info.value.message
    check_grammar(GrammarSpec.json_schema(SCHEMA), "tools")  # supported: no error


class _Tokenizer:
    def apply_chat_template(self, messages, add_generation_prompt=True, tools=None) -> str:
        return messages[-1]["content"]

    def encode(self, text: str) -> list[int]:
        return [1] * len(text)


def test_prepare_chat_puts_the_grammar_into_sampling_params():
    req = ChatCompletionRequest(
        model="m",
        messages=[{"role": "user", "content": "hi"}],
        response_format={"type": "json_schema", "json_schema": {"name": "p", "schema": SCHEMA}},
    )
    prepared = prepare_chat(req, _Tokenizer(), max_model_len=64)
    assert prepared.params.grammar == GrammarSpec.json_schema(SCHEMA)
    plain = ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "hi"}])
    assert prepare_chat(plain, _Tokenizer(), max_model_len=64).params.grammar is None
