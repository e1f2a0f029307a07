"""The request side of tool calling, with no model: validation (400s naming the parameter),
the family choice, rendering for templates that do and do not know tools, and the grammar."""

from __future__ import annotations

import json

import pytest
from tokenizers import Tokenizer as Backend
from tokenizers.models import WordLevel

from tokenfactory.engine.constraints.compile import grammar_error
from tokenfactory.models.chat_template import render_chat
from tokenfactory.models.tokenizer import Tokenizer
from tokenfactory.server.errors import APIError
from tokenfactory.server.tool_calls.families import (
    FAMILIES,
    HERMES,
    LLAMA3_JSON,
    SMOLLM2,
    ModelTraits,
    choose_family,
)
from tokenfactory.server.tool_calls.grammar import tool_call_grammar
from tokenfactory.server.tool_calls.render import TemplateAbilities, tool_prompt
from tokenfactory.server.tool_calls.request import read_tool_request
from tokenfactory.server.tool_calls.setup import prepare_tools

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
NOW = {"type": "function", "function": {"name": "now"}}

# SmolLM2-135M-Instruct's template: role and content only
SMOL_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# A Qwen-like template that renders tools, calls and tool results itself
TOOL_TEMPLATE = (
    "{% if tools %}TOOLS:{% for t in tools %}{{ t.function.name }};{% endfor %}{{ '\n' }}"
    "{% endif %}"
    "{% for m in messages %}{% if m.role == 'tool' %}RESULT {{ m.name }} {{ m.content }}\n"
    "{% elif m.tool_calls %}{% for c in m.tool_calls %}CALL {{ c.function.name }} "
    "{{ c.function.arguments | tojson }}\n{% endfor %}"
    "{% else %}{{ m.role }}: {{ m.content }}\n{% endif %}{% endfor %}"
)


def named(name: str) -> dict:
    return {"type": "function", "function": {"name": name}}


def bad(param: str, tools=None, tool_choice=None, parallel=None) -> APIError:
    with pytest.raises(APIError) as err:
        read_tool_request(tools, tool_choice, parallel)
    assert err.value.status == 400 and err.value.param.startswith(param), err.value
    return err.value


def test_valid_tools_and_choices():
    req = read_tool_request([WEATHER, NOW], None, None)
    assert req.choice == "auto" and req.parallel and req.offered and not req.forced
    assert req.tools[1].parameters == {"type": "object", "properties": {}}
    req = read_tool_request([WEATHER, NOW], named("now"), False)
    assert req.choice == "named" and req.forced and not req.parallel
    assert [t.name for t in req.callable_tools()] == ["now"]
    assert not read_tool_request([WEATHER], "none", None).offered
    assert read_tool_request([WEATHER], "required", None).forced
    assert not read_tool_request(None, "none", None).offered


def test_invalid_tools_name_the_parameter():
    bad("tools[0].type", [{"type": "retrieval"}])
    bad("tools[0].function", [{"type": "function"}])
    bad("tools[0].function.name", [{"type": "function", "function": {"name": "bad name!"}}])
    bad("tools[0].function.name", [{"type": "function", "function": {"name": "x" * 65}}])
    bad("tools[1].function.name", [WEATHER, WEATHER])
    params = "tools[0].function.parameters"
    bad(params, [{"type": "function", "function": {"name": "f", "parameters": [1]}}])
    bad(params, [{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}])
    weird = {"type": "object", "properties": {"a": {"type": "strng"}}}
    err = bad(params, [{"type": "function", "function": {"name": "f", "parameters": weird}}])
    assert "strng" in err.message and err.param == f"{params}.properties.a"


def test_invalid_tool_choice_names_tool_choice():
    assert "not one of the tools" in bad("tool_choice", [WEATHER], named("nope")).message
    bad("tool_choice", [WEATHER], "sometimes")
    bad("tool_choice", [WEATHER], {"type": "function"})
    bad("tool_choice", None, "required")


def traits(template="", name="", tokens=()):
    return ModelTraits(template, name, "llama", lambda t: t in tokens)


def test_family_choice_rule():
    assert choose_family(traits("... <tool_call> ...")) is HERMES
    assert choose_family(traits("{{ '<|python_tag|>' }}")) is LLAMA3_JSON
    assert choose_family(traits(name="", tokens=("<|python_tag|>",))) is LLAMA3_JSON
    assert choose_family(traits(SMOL_TEMPLATE, "Smollm2 135M 8k Lc100K Mix1 Ep2")) is SMOLLM2
    assert choose_family(traits(name="HuggingFaceTB/SmolLM2-360M-Instruct")) is SMOLLM2
    assert choose_family(traits(tokens=("<tool_call>",))) is HERMES
    assert choose_family(traits()) is HERMES
    assert choose_family(traits("<tool_call>"), override="llama3_json") is LLAMA3_JSON
    with pytest.raises(ValueError):
        choose_family(traits(), override="nope")


CONVERSATION = [
    {"role": "user", "content": "Weather in Paris?"},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"},
]


def test_template_without_tools_gets_the_family_prompt_and_text_calls():
    req = read_tool_request([WEATHER], None, None)
    prompt = tool_prompt(CONVERSATION, req, SMOLLM2, TemplateAbilities.of(SMOL_TEMPLATE))
    assert prompt.tools is None
    text = render_chat(SMOL_TEMPLATE, prompt.messages)
    assert text.startswith("<|im_start|>system\nYou can call functions")
    assert '"name": "get_weather"' in text and "<tools>" in text
    call = '{"name": "get_weather", "arguments": {"city": "Paris"}}'
    assert f"<|im_start|>assistant\n<tool_call>[{call}]</tool_call>" in text
    result = '{"name": "get_weather", "content": "sunny, 21 C"}'
    assert f"<|im_start|>user\n<tool_response>\n{result}\n</tool_response>" in text
    assert text.endswith("<|im_start|>assistant\n")


def test_system_prompt_keeps_the_callers_and_none_offers_nothing():
    req = read_tool_request([WEATHER], None, None)
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    prompt = tool_prompt(msgs, req, HERMES, TemplateAbilities.of(SMOL_TEMPLATE))
    assert prompt.messages[0]["content"].startswith("Be brief.\n\nYou can call functions")
    assert len(prompt.messages) == 2
    none = read_tool_request([WEATHER], "none", None)
    prompt = tool_prompt(msgs, none, HERMES, TemplateAbilities.of(SMOL_TEMPLATE))
    assert prompt.messages == msgs and prompt.tools is None


def test_template_with_tools_renders_them_itself_with_arguments_as_a_dict():
    req = read_tool_request([WEATHER], None, None)
    prompt = tool_prompt(CONVERSATION, req, HERMES, TemplateAbilities.of(TOOL_TEMPLATE))
    assert prompt.tools == [WEATHER]
    text = render_chat(TOOL_TEMPLATE, prompt.messages, tools=prompt.tools)
    assert text.splitlines() == [
        "TOOLS:get_weather;",
        "user: Weather in Paris?",
        'CALL get_weather {"city": "Paris"}',
        "RESULT get_weather sunny, 21 C",  # named after the call it answers
    ]


def test_bad_arguments_in_history_name_them():
    msgs = json.loads(json.dumps(CONVERSATION))
    msgs[1]["tool_calls"][0]["function"]["arguments"] = "{not json"
    req = read_tool_request([WEATHER], None, None)
    with pytest.raises(APIError) as err:
        tool_prompt(msgs, req, HERMES, TemplateAbilities.of(TOOL_TEMPLATE))
    assert err.value.param == "messages[1].tool_calls[0].function.arguments"


@pytest.mark.parametrize("family", list(FAMILIES.values()), ids=lambda f: f.name)
@pytest.mark.parametrize("parallel", [True, False])
def test_forced_grammars_compile(family, parallel):
    req = read_tool_request([WEATHER, NOW], "required", parallel)
    spec = tool_call_grammar(req, family)
    assert grammar_error(spec) is None, spec.source
    assert "%json" in spec.source and "get_weather" in spec.source and "now" in spec.source
    assert ("*" in spec.source.splitlines()[0]) == parallel
    only_now = read_tool_request([WEATHER, NOW], named("now"), None)
    assert "get_weather" not in tool_call_grammar(only_now, family).source


def test_family_call_text_parses_back_with_its_own_parser():
    calls = [("get_weather", {"city": "Paris"}), ("now", {})]
    for family in FAMILIES.values():
        parser = family.make_parser()
        parser.feed(family.call_text(calls))
        parser.finish()
        got = [(c.name, json.loads(c.arguments)) for c in parser.tool_calls]
        assert got == calls, family.name


def tiny_tokenizer(template: str) -> Tokenizer:
    backend = Backend(WordLevel({"<unk>": 0}, unk_token="<unk>"))
    return Tokenizer(backend, chat_template=template)


def test_prepare_tools_for_a_smollm2_model():
    tok = tiny_tokenizer(SMOL_TEMPLATE)
    plain = [{"role": "user", "content": "hi"}]
    setup = prepare_tools(None, None, None, plain, tok, "Smollm2 135M", "llama")
    assert setup.calling is None and setup.grammar is None and setup.prompt.messages == plain
    setup = prepare_tools([WEATHER], "required", False, plain, tok, "Smollm2 135M", "llama")
    assert setup.calling is not None and setup.calling.family is SMOLLM2
    assert setup.grammar is not None and setup.grammar.source.startswith('start: "<tool_call>["')
    assert setup.prompt.tools is None and "<tools>" in setup.prompt.messages[0]["content"]
    auto = prepare_tools([WEATHER], "auto", None, plain, tok, "Smollm2 135M", "llama")
    assert auto.grammar is None and auto.calling is not None
    # a history with calls is rendered for the template even when tools are not offered
    history = prepare_tools([WEATHER], "none", None, CONVERSATION, tok, "Smollm2 135M", "llama")
    assert history.calling is None and "<tool_call>[" in history.prompt.messages[1]["content"]


def test_prepare_tools_names_an_unsupported_schema_feature():
    tok = tiny_tokenizer(SMOL_TEMPLATE)
    tool = {
        "type": "function",
        "function": {
            "name": "f",
            "parameters": {"type": "object", "properties": {"a": {"not": {"type": "string"}}}},
        },
    }
    plain = [{"role": "user", "content": "hi"}]
    with pytest.raises(APIError) as err:
        prepare_tools([WEATHER, tool], "required", None, plain, tok)
    assert err.value.param == "tools[1].function.parameters" and "not" in err.value.message
    # auto builds no grammar: the schema is only shown to the model
    assert prepare_tools([WEATHER, tool], "auto", None, plain, tok).grammar is None


def test_the_override_environment_variable(monkeypatch):
    tok = tiny_tokenizer(SMOL_TEMPLATE)
    plain = [{"role": "user", "content": "hi"}]
    monkeypatch.setenv("TOKENFACTORY_TOOL_PARSER", "llama3_json")
    setup = prepare_tools([WEATHER], None, None, plain, tok, "Smollm2 135M")
    assert setup.calling is not None and setup.calling.family is LLAMA3_JSON
    monkeypatch.setenv("TOKENFACTORY_TOOL_PARSER", "no-such-family")  # logged and ignored
    setup = prepare_tools([WEATHER], None, None, plain, tok, "Smollm2 135M")
    assert setup.calling is not None and setup.calling.family is SMOLLM2
