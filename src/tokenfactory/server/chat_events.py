"""What a chat generation says, independent of the API that carries it.

The engine produces text; an `OutputParser` turns that text into `ChatEvent`s (plain text, or
tool calls as they are recognised); one shaper per API (chat completions, Responses, Anthropic
Messages) turns events into that API's stream chunks or whole body. `run_chat` in
`chat_route` drives the three for any API.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Protocol

from tokenfactory.engine.sampling.logprobs import TokenLogprob
from tokenfactory.models.tokenizer import Tokenizer
from tokenfactory.server.errors import APIError


@dataclass
class Usage:
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0

    def to_dict(self) -> dict:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
        }


# -- events --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TextDelta:
    """Content outside any tool call."""

    text: str


@dataclass(frozen=True)
class ToolCallStart:
    """A tool call whose name is known; its arguments follow as `ToolCallArguments`."""

    index: int
    call_id: str
    name: str


@dataclass(frozen=True)
class ToolCallArguments:
    """A piece of the call's arguments JSON text; the pieces concatenate to the whole text."""

    index: int
    fragment: str


ChatEvent = TextDelta | ToolCallStart | ToolCallArguments


@dataclass(frozen=True)
class ToolCall:
    call_id: str
    name: str
    arguments: str  # the whole JSON text of the arguments object


@dataclass(frozen=True)
class ChatResult:
    """A finished generation. `finish_reason` in OpenAI chat terms: "stop", "length",
    "tool_calls" or "content_filter"."""

    text: str
    tool_calls: list[ToolCall]
    finish_reason: str
    usage: Usage
    service_tier: str  # the tier delivered (what was billed)
    stop_sequence: str | None = None  # the stop string that ended it, if one did


def new_call_id() -> str:
    return f"call_{secrets.token_hex(12)}"


# -- parsing the model's text into events --------------------------------------------------------


class OutputParser(Protocol):
    """Fed the generated text delta by delta; says what it means as events.

    `text` and `tool_calls` are the final reading once `finish` was called: content (with
    malformed or unfinished calls left in as text) and the calls that were complete."""

    def feed(self, delta: str) -> list[ChatEvent]: ...

    def finish(self) -> list[ChatEvent]: ...

    @property
    def text(self) -> str: ...

    @property
    def tool_calls(self) -> list[ToolCall]: ...


@dataclass
class PlainText:
    """The parser for requests without tools: every delta is content."""

    _parts: list[str] = field(default_factory=list)

    def feed(self, delta: str) -> list[ChatEvent]:
        if not delta:
            return []
        self._parts.append(delta)
        return [TextDelta(delta)]

    def finish(self) -> list[ChatEvent]:
        return []

    @property
    def text(self) -> str:
        return "".join(self._parts)

    @property
    def tool_calls(self) -> list[ToolCall]:
        return []


def chat_finish_reason(engine_reason: str, tool_calls: list[ToolCall]) -> str:
    """The API's finish reason: a generation that stopped after complete calls asked for them;
    one cut by max_tokens stays "length" (its unfinished call is content)."""
    if engine_reason == "stop" and tool_calls:
        return "tool_calls"
    return engine_reason


# -- shaping events into an API's bytes ----------------------------------------------------------


@dataclass(frozen=True)
class ChatContext:
    """What a shaper knows about its request once it is admitted."""

    request_id: str  # the id the client sees; the ledger row's id
    model: str  # the model name as the client asked for it
    created: int  # unix seconds
    fingerprint: str
    tokenizer: Tokenizer | None  # to spell logprob tokens
    service_tier: str  # the tier asked for (after mapping); the delivered one is in ChatResult
    include_usage: bool  # stream_options.include_usage
    logprobs: bool  # logprobs were asked for
    prompt_tokens: int = 0  # the prompt's length in tokens, known before any output


class StreamShaper(Protocol):
    """One API's server-sent events for a streamed generation."""

    def start(self, context: ChatContext) -> None: ...

    def opening(self) -> list[bytes]: ...

    def events(
        self, events: list[ChatEvent], logprobs: list[TokenLogprob] | None
    ) -> list[bytes]: ...

    def closing(self, result: ChatResult) -> list[bytes]: ...

    def failure(self, error: APIError) -> bytes: ...


class BodyShaper(Protocol):
    """One API's JSON body for a whole (non-streamed) generation."""

    def start(self, context: ChatContext) -> None: ...

    def body(self, result: ChatResult, logprobs: list[TokenLogprob] | None) -> dict: ...
