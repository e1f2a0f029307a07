"""Anthropic's stream events, shaped from chat events as they are generated.

Order, as Anthropic streams it: `message_start` (the message with empty content), a `ping`,
then per content block `content_block_start`, its deltas (`text_delta`, or
`input_json_delta` pieces of a tool's input JSON) and `content_block_stop`; finally
`message_delta` (stop_reason and the whole usage) and `message_stop`. A failure after the
start is an `error` event. Each event is sent as `event: <type>` plus its JSON `data`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tokenfactory.engine.sampling.logprobs import TokenLogprob
from tokenfactory.server.chat_events import (
    ChatContext,
    ChatEvent,
    ChatResult,
    TextDelta,
    ToolCallArguments,
    ToolCallStart,
    Usage,
)
from tokenfactory.server.errors import APIError
from tokenfactory.server.messages_api.errors import anthropic_sse
from tokenfactory.server.messages_api.shape import (
    message_object,
    stop_reason,
    tool_use_id,
    usage_object,
)
from tokenfactory.server.typed_sse import sse


@dataclass
class MessagesStreamShaper:
    context: ChatContext | None = field(default=None, init=False)
    _blocks: int = field(default=0, init=False)  # content blocks started
    _open: str | None = field(default=None, init=False)  # "text" or "tool_use"
    _call_blocks: dict[int, int] = field(default_factory=dict, init=False)  # call -> block

    def start(self, context: ChatContext) -> None:
        self.context = context

    def opening(self) -> list[bytes]:
        assert self.context is not None, "start() gives the shaper its request"
        # The prompt's length is known now; what the prefix cache served comes with the result.
        usage = usage_object(Usage(self.context.prompt_tokens), self.context.service_tier)
        return [
            sse({"type": "message_start", "message": message_object(self.context, [], usage)}),
            sse({"type": "ping"}),
        ]

    def events(self, events: list[ChatEvent], logprobs: list[TokenLogprob] | None) -> list[bytes]:
        out: list[bytes] = []
        for event in events:
            if isinstance(event, TextDelta) and event.text:
                if self._open != "text":
                    out += self._start_block({"type": "text", "text": ""}, "text")
                out.append(self._delta({"type": "text_delta", "text": event.text}))
            elif isinstance(event, ToolCallStart):
                block = {
                    "type": "tool_use",
                    "id": tool_use_id(event.call_id),
                    "name": event.name,
                    "input": {},
                }
                out += self._start_block(block, "tool_use")
                self._call_blocks[event.index] = self._blocks - 1
            elif isinstance(event, ToolCallArguments) and event.fragment:
                index = self._call_blocks.get(event.index)
                if index is not None and index == self._blocks - 1 and self._open == "tool_use":
                    out.append(
                        self._delta({"type": "input_json_delta", "partial_json": event.fragment})
                    )
        return out

    def closing(self, result: ChatResult) -> list[bytes]:
        out: list[bytes] = []
        if self._blocks == 0 and not result.tool_calls:
            out += self._start_block({"type": "text", "text": ""}, "text")
        out += self._stop_block()
        delta = {
            "stop_reason": stop_reason(result.finish_reason, result.stop_sequence),
            "stop_sequence": result.stop_sequence,
        }
        usage = usage_object(result.usage, result.service_tier)
        out.append(sse({"type": "message_delta", "delta": delta, "usage": usage}))
        out.append(sse({"type": "message_stop"}))
        return out

    def failure(self, error: APIError) -> bytes:
        return anthropic_sse(error)

    # -- blocks ------------------------------------------------------------------------------

    def _start_block(self, block: dict[str, Any], kind: str) -> list[bytes]:
        out = self._stop_block()
        out.append(
            sse({"type": "content_block_start", "index": self._blocks, "content_block": block})
        )
        self._blocks += 1
        self._open = kind
        return out

    def _stop_block(self) -> list[bytes]:
        if self._open is None:
            return []
        self._open = None
        return [sse({"type": "content_block_stop", "index": self._blocks - 1})]

    def _delta(self, delta: dict[str, Any]) -> bytes:
        return sse({"type": "content_block_delta", "index": self._blocks - 1, "delta": delta})
