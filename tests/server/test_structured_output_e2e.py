"""Structured outputs through a real factory process and the official openai SDK: JSON schema,
pydantic models with `parse`, streaming, json_object, and the 400 for a schema that cannot be
served. Every request is settled in the ledger."""

from __future__ import annotations

import json
from typing import Literal

import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

from tests.server.conftest import MODEL, ledger_rows

pytestmark = pytest.mark.slow

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 30},
        "age": {"type": "integer", "minimum": 0, "maximum": 130},
        "hobbies": {"type": "array", "items": {"type": "string", "maxLength": 20}, "maxItems": 3},
    },
    "required": ["name", "age", "hobbies"],
    "additionalProperties": False,
}
ASK = [{"role": "user", "content": "Describe Alice, who is 30 and likes chess. Answer in JSON."}]
SCHEMA_FORMAT = {
    "type": "json_schema",
    "json_schema": {"name": "person", "schema": PERSON, "strict": True},
}


class Weather(BaseModel):
    city: str = Field(max_length=30)
    temperature_c: int = Field(ge=-90, le=60)
    condition: Literal["sunny", "cloudy", "rainy", "snowy"]


@pytest.fixture(scope="module")
def client(factory_server):
    return factory_server.openai("super")


def test_json_schema_answer_validates_and_is_settled(client, factory_server):
    r = client.chat.completions.create(
        model=MODEL, messages=ASK, response_format=SCHEMA_FORMAT, temperature=0, max_tokens=96
    )
    choice = r.choices[0]
    assert choice.finish_reason == "stop"
    jsonschema.validate(json.loads(choice.message.content), PERSON)
    row = ledger_rows(factory_server.data_dir)[r.id]
    assert row["completion_tokens"] == r.usage.completion_tokens


def test_streamed_answer_is_the_same_json(client):
    kw = dict(model=MODEL, messages=ASK, response_format=SCHEMA_FORMAT, temperature=0)
    client.chat.completions.create(**kw, max_tokens=96)  # both below reuse the cached prefix
    whole = client.chat.completions.create(**kw, max_tokens=96).choices[0].message.content
    chunks = list(client.chat.completions.create(**kw, max_tokens=96, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    jsonschema.validate(json.loads(text), PERSON)


def test_sdk_parse_with_a_pydantic_model(client):
    messages = [{"role": "user", "content": "The weather in Paris: 21 degrees and sunny."}]
    r = client.chat.completions.parse(
        model=MODEL, messages=messages, response_format=Weather, temperature=0, max_tokens=64
    )
    parsed = r.choices[0].message.parsed
    assert isinstance(parsed, Weather)
    assert -90 <= parsed.temperature_c <= 60 and len(parsed.city) <= 30


def test_json_object_mode_returns_an_object(client):
    r = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Give a JSON object with a user's id and name."}],
        response_format={"type": "json_object"},
        temperature=0,
        max_tokens=64,
    )
    assert r.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(r.choices[0].message.content), dict)


@pytest.mark.parametrize(
    "response_format,param",
    [
        (
            {"type": "json_schema", "json_schema": {"name": "x", "schema": {"not": {}}}},
            "response_format",
        ),
        ({"type": "yaml"}, "response_format.type"),
        (
            {"type": "json_schema", "json_schema": {"schema": PERSON}},
            "response_format.json_schema.name",
        ),
    ],
)
def test_unservable_response_formats_are_400s(client, response_format, param):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model=MODEL, messages=ASK, response_format=response_format, max_tokens=8
        )
    err = info.value.body
    assert err["param"] == param and err["type"] == "invalid_request_error"
