"""The Responses API's response object and output items, built from a finished chat result.

Shared by the whole-body shaper here and the stream shaper (`stream`), whose
`response.completed` event carries the same object.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tokenfactory.engine.sampling.logprobs import TokenLogprob
from tokenfactory.server.chat_events import ChatContext, ChatResult, Usage

IdMaker = Callable[[str], str]


def random_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


def outcome(finish_reason: str) -> tuple[str, dict[str, str] | None]:
    """The response's status and incomplete_details for a chat finish reason."""
    if finish_reason == "length":
        return "incomplete", {"reason": "max_output_tokens"}
    if finish_reason == "content_filter":
        return "incomplete", {"reason": "content_filter"}
    return "completed", None


def usage_object(usage: Usage) -> dict[str, Any]:
    return {
        "input_tokens": usage.prompt_tokens,
        # the prefix cache fills on its own, at no charge: nothing is ever "written"
        "input_tokens_details": {"cached_tokens": usage.cached_tokens, "cache_write_tokens": 0},
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
    }


def text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def message_item(item_id: str, text: str | None, status: str) -> dict[str, Any]:
    """An assistant message; `text` None: no content part yet (as a stream first adds it)."""
    content = [] if text is None else [text_part(text)]
    return {
        "id": item_id,
        "type": "message",
        "role": "assistant",
        "status": status,
        "content": content,
    }


def function_call_item(
    item_id: str, call_id: str, name: str, arguments: str, status: str
) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "function_call",
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
        "status": status,
    }


def response_object(
    context: ChatContext,
    echo: dict[str, Any],
    *,
    status: str,
    output: list[dict[str, Any]],
    service_tier: str,
    usage: Usage | None = None,
    incomplete_details: dict[str, str] | None = None,
    completed_at: int | None = None,
) -> dict[str, Any]:
    return {
        "id": context.request_id,
        "object": "response",
        "created_at": context.created,
        "status": status,
        "completed_at": completed_at,
        "error": None,
        "incomplete_details": incomplete_details,
        "output": output,
        "usage": usage_object(usage) if usage is not None else None,
        "service_tier": service_tier,
        **echo,
        "model": context.model,
    }


@dataclass
class ResponsesBodyShaper:
    """The whole response object for a request that did not stream."""

    echo: dict[str, Any]
    clock: Callable[[], float]
    new_id: IdMaker = random_id
    context: ChatContext | None = field(default=None, init=False)

    def start(self, context: ChatContext) -> None:
        self.context = context

    def body(self, result: ChatResult, logprobs: list[TokenLogprob] | None) -> dict[str, Any]:
        assert self.context is not None, "start() gives the shaper its request"
        status, details = outcome(result.finish_reason)
        item_status = "completed" if status == "completed" else "incomplete"
        output: list[dict[str, Any]] = []
        if result.text or not result.tool_calls:
            output.append(message_item(self.new_id("msg"), result.text, item_status))
        for call in result.tool_calls:
            output.append(
                function_call_item(
                    self.new_id("fc"), call.call_id, call.name, call.arguments, "completed"
                )
            )
        return response_object(
            self.context,
            self.echo,
            status=status,
            output=output,
            service_tier=result.service_tier,
            usage=result.usage,
            incomplete_details=details,
            completed_at=int(self.clock()) if status == "completed" else None,
        )
