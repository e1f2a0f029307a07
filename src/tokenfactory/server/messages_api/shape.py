"""Anthropic's message object, built from a finished chat result.

Anthropic counts input in three parts: `input_tokens` (read fresh), `cache_read_input_tokens`
(served from the prefix cache) and `cache_creation_input_tokens` (written to a cache: nothing
here, the prefix cache fills on its own and costs nothing extra). The tier served is reported
in `usage.service_tier`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from tokenfactory.engine.sampling.logprobs import TokenLogprob
from tokenfactory.server.chat_events import ChatContext, ChatResult, Usage

_STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "content_filter": "refusal",
}


def stop_reason(finish_reason: str, stop_sequence: str | None = None) -> str:
    if stop_sequence is not None and finish_reason == "stop":
        return "stop_sequence"
    return _STOP_REASONS.get(finish_reason, "end_turn")


def tool_use_id(call_id: str) -> str:
    """Anthropic's `toolu_` id for a call; the random part stays the call's own."""
    return "toolu_" + call_id.removeprefix("call_")


def tool_input(arguments: str) -> dict[str, Any]:
    """A call's arguments JSON text as the object Anthropic's `input` is."""
    try:
        value = json.loads(arguments) if arguments else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def usage_object(usage: Usage, service_tier: str) -> dict[str, Any]:
    cached = min(usage.cached_tokens, usage.prompt_tokens)
    return {
        "input_tokens": usage.prompt_tokens - cached,
        "output_tokens": usage.completion_tokens,
        "cache_read_input_tokens": cached,
        "cache_creation_input_tokens": 0,
        "service_tier": service_tier,
    }


def message_object(
    context: ChatContext,
    content: list[dict[str, Any]],
    usage: dict[str, Any],
    stop: str | None = None,
    stop_sequence: str | None = None,
) -> dict[str, Any]:
    return {
        "id": context.request_id,
        "type": "message",
        "role": "assistant",
        "model": context.model,
        "content": content,
        "stop_reason": stop,
        "stop_sequence": stop_sequence,
        "usage": usage,
    }


@dataclass
class MessagesBodyShaper:
    """The whole message for a request that did not stream."""

    context: ChatContext | None = field(default=None, init=False)

    def start(self, context: ChatContext) -> None:
        self.context = context

    def body(self, result: ChatResult, logprobs: list[TokenLogprob] | None) -> dict[str, Any]:
        assert self.context is not None, "start() gives the shaper its request"
        content: list[dict[str, Any]] = []
        if result.text or not result.tool_calls:
            content.append({"type": "text", "text": result.text})
        for call in result.tool_calls:
            content.append(
                {
                    "type": "tool_use",
                    "id": tool_use_id(call.call_id),
                    "name": call.name,
                    "input": tool_input(call.arguments),
                }
            )
        usage = usage_object(result.usage, result.service_tier)
        stop = stop_reason(result.finish_reason, result.stop_sequence)
        return message_object(self.context, content, usage, stop, result.stop_sequence)
