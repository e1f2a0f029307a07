"""Our Jinja environment renders templates exactly as transformers' apply_chat_template does."""

from __future__ import annotations

import jinja2
import pytest

from tokenfactory.models.chat_template import render_chat
from tokenfactory.models.tokenizer import Tokenizer

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather <now> & 'later' in a city: 東京, Zürich",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                "required": ["city"],
            },
        },
    }
]

MESSAGES = [
    {"role": "system", "content": "You are <b>helpful</b> & 'kind'."},
    {"role": "user", "content": "Weather in 東京?"},
    {
        "role": "assistant",
        "content": None,  # dropped, as transformers drops None values
        "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "東京"}}}],
    },
    {"role": "tool", "content": '{"temp": 21}'},
    {"role": "user", "content": "Thanks"},
]

TEMPLATES = {
    "tojson": (
        "{% for t in tools %}{{ t | tojson }}\n{{ t | tojson(indent=2) }}\n{% endfor %}"
        "{% for m in messages %}{{ m.role }}: {{ m.content if m.content is defined else '' }}"
        "{% if m.tool_calls is defined %}{{ m.tool_calls | tojson }}{% endif %}\n{% endfor %}"
    ),
    "loop_controls_and_namespace": (
        "{% set ns = namespace(n=0) %}"
        "{% for m in messages %}{% if m.role == 'tool' %}{% continue %}{% endif %}"
        "{% set ns.n = ns.n + 1 %}{% if ns.n > 3 %}{% break %}{% endif %}"
        "[{{ ns.n }}:{{ m.role }}]\n{% endfor %}"
    ),
    "whitespace_control": (
        "{% for m in messages %}\n"
        "    {% if m.role == 'user' %}\n"
        "        U: {{ m.content }}\n"
        "    {% endif %}\n"
        "{% endfor %}\n"
        "{% if add_generation_prompt %}A:{% endif %}"
    ),
    "special_token_variables": "{{ bos_token }}|{{ eos_token }}|{{ pad_token }}|{{ unk_token }}",
    "strftime_now": "{{ strftime_now('%Y') }}",
    "generation_tag": (
        "{% for m in messages %}{% if m.role == 'assistant' %}"
        "{% generation %}{{ m.tool_calls | length }}{% endgeneration %}"
        "{% else %}{{ m.role }}{% endif %}{% endfor %}"
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_render_matches_transformers(tokenizer: Tokenizer, hf_gguf_tokenizer, name: str) -> None:
    template = TEMPLATES[name]
    ours = Tokenizer(
        tokenizer.backend,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_ids=tokenizer.eos_token_ids,
        pad_token_id=tokenizer.pad_token_id,
        unk_token_id=tokenizer.unk_token_id,
        chat_template=template,
    ).apply_chat_template(MESSAGES, tools=TOOLS)
    theirs = hf_gguf_tokenizer.apply_chat_template(
        MESSAGES, chat_template=template, tools=TOOLS, tokenize=False, add_generation_prompt=True
    )
    assert ours == theirs


def test_raise_exception_surfaces_as_template_error() -> None:
    template = "{{ raise_exception('Conversation roles must alternate') }}"
    with pytest.raises(jinja2.TemplateError, match="must alternate"):
        render_chat(template, [{"role": "user", "content": "x"}])


def test_sandbox_blocks_attribute_escapes() -> None:
    template = "{{ messages.__class__.__mro__ }}"
    with pytest.raises(jinja2.exceptions.SecurityError):
        render_chat(template, [{"role": "user", "content": "x"}])


def test_kwargs_reach_the_template() -> None:
    template = "{% if enable_thinking is false %}no-think{% else %}think{% endif %}"
    messages = [{"role": "user", "content": "x"}]
    assert render_chat(template, messages, enable_thinking=False) == "no-think"
    assert render_chat(template, messages) == "think"


def test_empty_conversation_rejected() -> None:
    with pytest.raises(ValueError, match="empty"):
        render_chat("{{ messages }}", [])
