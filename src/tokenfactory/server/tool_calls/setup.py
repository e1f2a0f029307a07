"""A chat request's tool calling, set up: the prompt the template gets, the parser for the
reply, and the grammar when calls are forced. The one entry point `prepare_chat` calls."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from tokenfactory.engine.constraints.spec import GrammarSpec
from tokenfactory.models.chat_template import CHATML_TEMPLATE
from tokenfactory.models.tokenizer import Tokenizer
from tokenfactory.server.chat_events import ChatEvent, OutputParser, TextDelta, ToolCall
from tokenfactory.server.structured_output import check_grammar
from tokenfactory.server.tool_calls.families import (
    FAMILIES,
    ModelTraits,
    ToolFamily,
    choose_family,
)
from tokenfactory.server.tool_calls.grammar import tool_call_grammar
from tokenfactory.server.tool_calls.render import TemplateAbilities, ToolPrompt, tool_prompt
from tokenfactory.server.tool_calls.request import ToolRequest, read_tool_request

OVERRIDE_ENV = "TOKENFACTORY_TOOL_PARSER"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ToolCalling:
    """How one request's reply is read for calls."""

    request: ToolRequest
    family: ToolFamily

    def parser(self) -> OutputParser:
        parser = self.family.make_parser()
        return parser if self.request.parallel else FirstCallOnly(parser)


@dataclass(frozen=True)
class ToolSetup:
    prompt: ToolPrompt
    calling: ToolCalling | None  # None: the reply is plain text
    grammar: GrammarSpec | None  # set when calls are forced


def model_traits(tokenizer: Tokenizer, model_name: str, architecture: str) -> ModelTraits:
    templates = [tokenizer.chat_template or "", *tokenizer.named_chat_templates.values()]
    return ModelTraits(
        template="\n".join(templates),
        name=model_name,
        architecture=architecture,
        has_token=lambda text: tokenizer.token_to_id(text) is not None,
    )


def prepare_tools(
    tools: list[Any] | None,
    tool_choice: Any,
    parallel_tool_calls: bool | None,
    messages: list[dict[str, Any]],
    tokenizer: Tokenizer,
    model_name: str = "",
    architecture: str = "",
) -> ToolSetup:
    request = read_tool_request(tools, tool_choice, parallel_tool_calls)
    if not request.offered and not any(_about_tools(m) for m in messages):
        return ToolSetup(ToolPrompt(messages, None), None, None)  # a plain conversation
    family = choose_family(model_traits(tokenizer, model_name, architecture), _override())
    abilities = TemplateAbilities.of(_template_for(tokenizer, request.offered))
    prompt = tool_prompt(messages, request, family, abilities)
    if not request.offered:
        return ToolSetup(prompt, None, None)
    grammar = None
    if request.forced:
        for i, tool in enumerate(request.tools):
            if tool in request.callable_tools():
                check_grammar(GrammarSpec.json_schema(tool.parameters), _params(i))
        grammar = tool_call_grammar(request, family)
        check_grammar(grammar, "tools")
    return ToolSetup(prompt, ToolCalling(request, family), grammar)


def _override() -> str | None:
    name = os.environ.get(OVERRIDE_ENV) or None
    if name is not None and name not in FAMILIES:
        _warn_unknown(name)
        return None
    return name


@lru_cache(maxsize=4)
def _warn_unknown(name: str) -> None:
    log.warning(
        "%s=%r names no tool-call family (known: %s); ignored",
        OVERRIDE_ENV,
        name,
        ", ".join(FAMILIES),
    )


def _about_tools(message: dict[str, Any]) -> bool:
    return bool(message.get("tool_calls")) or message.get("role") == "tool"


def _params(i: int) -> str:
    return f"tools[{i}].function.parameters"


def _template_for(tokenizer: Tokenizer, with_tools: bool) -> str:
    """The template `apply_chat_template` will use (it takes "tool_use" when given tools)."""
    if with_tools and "tool_use" in tokenizer.named_chat_templates:
        return tokenizer.named_chat_templates["tool_use"]
    return tokenizer.chat_template or CHATML_TEMPLATE


@dataclass
class FirstCallOnly:
    """`parallel_tool_calls: false`: calls after the first are dropped (the grammar already
    allows only one where calls are forced)."""

    inner: OutputParser

    def feed(self, delta: str) -> list[ChatEvent]:
        return self._keep(self.inner.feed(delta))

    def finish(self) -> list[ChatEvent]:
        return self._keep(self.inner.finish())

    @property
    def text(self) -> str:
        return self.inner.text

    @property
    def tool_calls(self) -> list[ToolCall]:
        return self.inner.tool_calls[:1]

    def _keep(self, events: list[ChatEvent]) -> list[ChatEvent]:
        return [ev for ev in events if isinstance(ev, TextDelta) or ev.index == 0]
