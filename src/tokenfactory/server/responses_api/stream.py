"""The Responses API's typed stream events, shaped from chat events as they are generated.

Order, as OpenAI streams it: `response.created`, `response.in_progress`; per output item
`response.output_item.added`, then for a message `response.content_part.added`, text
deltas, `response.output_text.done`, `response.content_part.done`, or for a function call
argument deltas and `response.function_call_arguments.done`; `response.output_item.done`;
finally `response.completed` (or `response.incomplete` when max_output_tokens cut it). Every
event carries a `sequence_number` counting from 0. Text after a tool call (or a call after
text) opens a new output item, so `output_index` follows the order things were said.
"""

from __future__ import annotations

from collections.abc import Callable
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
)
from tokenfactory.server.errors import APIError
from tokenfactory.server.responses_api.shape import (
    IdMaker,
    function_call_item,
    message_item,
    outcome,
    random_id,
    response_object,
    text_part,
)
from tokenfactory.server.typed_sse import sse


@dataclass
class _Item:
    """One output item as streamed so far."""

    output_index: int
    item_id: str
    kind: str  # "message" or "function_call"
    text: str = ""  # a message's text, or a call's arguments
    call_id: str = ""
    name: str = ""
    status: str = "in_progress"  # "completed" or "incomplete" once closed

    @property
    def done(self) -> bool:
        return self.status != "in_progress"

    def final(self) -> dict[str, Any]:
        if self.kind == "message":
            return message_item(self.item_id, self.text, self.status)
        return function_call_item(self.item_id, self.call_id, self.name, self.text, self.status)


@dataclass
class ResponsesStreamShaper:
    echo: dict[str, Any]
    clock: Callable[[], float]
    new_id: IdMaker = random_id
    context: ChatContext | None = field(default=None, init=False)
    _sequence: int = field(default=0, init=False)
    _items: list[_Item] = field(default_factory=list, init=False)
    _calls: dict[int, _Item] = field(default_factory=dict, init=False)  # by tool-call index

    def start(self, context: ChatContext) -> None:
        self.context = context

    # -- the protocol ------------------------------------------------------------------------

    def opening(self) -> list[bytes]:
        snapshot = self._response("in_progress", self.context_tier)
        return [
            self._event("response.created", response=snapshot),
            self._event("response.in_progress", response=snapshot),
        ]

    def events(self, events: list[ChatEvent], logprobs: list[TokenLogprob] | None) -> list[bytes]:
        out: list[bytes] = []
        for event in events:
            if isinstance(event, TextDelta):
                out += self._text(event.text)
            elif isinstance(event, ToolCallStart):
                out += self._call_start(event)
            elif isinstance(event, ToolCallArguments):
                out += self._call_arguments(event)
        return out

    def closing(self, result: ChatResult) -> list[bytes]:
        status, details = outcome(result.finish_reason)
        item_status = "completed" if status == "completed" else "incomplete"
        out: list[bytes] = []
        if not self._items:  # nothing was said: still answer with an (empty) message
            out += self._open_message()
        out += self._close_open(item_status)
        response = self._response(
            status,
            result.service_tier,
            output=[item.final() for item in self._items],
            result=result,
            details=details,
        )
        kind = "response.completed" if status == "completed" else "response.incomplete"
        out.append(self._event(kind, response=response))
        return out

    def failure(self, error: APIError) -> bytes:
        """An `error` event, then `response.failed` with what was streamed before it."""
        err = self._event("error", code=error.code, message=error.message, param=error.param)
        failed = self._response("failed", self.context_tier, output=self._partial_output())
        # The response's error code is one of OpenAI's few; the error event names ours.
        code = "rate_limit_exceeded" if error.status == 429 else "server_error"
        failed["error"] = {"code": code, "message": error.message}
        return err + self._event("response.failed", response=failed)

    # -- items -------------------------------------------------------------------------------

    def _text(self, text: str) -> list[bytes]:
        if not text:
            return []
        out: list[bytes] = []
        current = self._open_item()
        if current is None or current.kind != "message":
            out += self._close_open("completed")
            out += self._open_message()
            current = self._items[-1]
        current.text += text
        out.append(
            self._event(
                "response.output_text.delta",
                item_id=current.item_id,
                output_index=current.output_index,
                content_index=0,
                delta=text,
                logprobs=[],
            )
        )
        return out

    def _call_start(self, event: ToolCallStart) -> list[bytes]:
        out = self._close_open("completed")
        item = _Item(len(self._items), self.new_id("fc"), "function_call")
        item.call_id, item.name = event.call_id, event.name
        self._items.append(item)
        self._calls[event.index] = item
        added = function_call_item(item.item_id, item.call_id, item.name, "", "in_progress")
        out.append(
            self._event("response.output_item.added", output_index=item.output_index, item=added)
        )
        return out

    def _call_arguments(self, event: ToolCallArguments) -> list[bytes]:
        item = self._calls.get(event.index)
        if item is None or item.done or not event.fragment:
            return []
        item.text += event.fragment
        return [
            self._event(
                "response.function_call_arguments.delta",
                item_id=item.item_id,
                output_index=item.output_index,
                delta=event.fragment,
            )
        ]

    def _open_message(self) -> list[bytes]:
        item = _Item(len(self._items), self.new_id("msg"), "message")
        self._items.append(item)
        return [
            self._event(
                "response.output_item.added",
                output_index=item.output_index,
                item=message_item(item.item_id, None, "in_progress"),
            ),
            self._event(
                "response.content_part.added",
                item_id=item.item_id,
                output_index=item.output_index,
                content_index=0,
                part=text_part(""),
            ),
        ]

    def _open_item(self) -> _Item | None:
        if self._items and not self._items[-1].done:
            return self._items[-1]
        return None

    def _close_open(self, status: str) -> list[bytes]:
        item = self._open_item()
        if item is None:
            return []
        item.status = status
        where = {"item_id": item.item_id, "output_index": item.output_index}
        out: list[bytes] = []
        if item.kind == "message":
            out.append(
                self._event(
                    "response.output_text.done",
                    **where,
                    content_index=0,
                    text=item.text,
                    logprobs=[],
                )
            )
            out.append(
                self._event(
                    "response.content_part.done",
                    **where,
                    content_index=0,
                    part=text_part(item.text),
                )
            )
        else:
            out.append(
                self._event("response.function_call_arguments.done", **where, arguments=item.text)
            )
        out.append(
            self._event(
                "response.output_item.done", output_index=item.output_index, item=item.final()
            )
        )
        return out

    def _partial_output(self) -> list[dict[str, Any]]:
        """The items streamed before a failure; the one it interrupted is incomplete."""
        output = []
        for item in self._items:
            final = item.final()
            if not item.done:
                final["status"] = "incomplete"
            output.append(final)
        return output

    # -- envelopes ---------------------------------------------------------------------------

    @property
    def context_tier(self) -> str:
        assert self.context is not None, "start() gives the shaper its request"
        return self.context.service_tier

    def _response(
        self,
        status: str,
        service_tier: str,
        output: list[dict[str, Any]] | None = None,
        result: ChatResult | None = None,
        details: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        assert self.context is not None, "start() gives the shaper its request"
        return response_object(
            self.context,
            self.echo,
            status=status,
            output=output or [],
            service_tier=service_tier,
            usage=result.usage if result is not None else None,
            incomplete_details=details,
            completed_at=int(self.clock()) if status == "completed" else None,
        )

    def _event(self, kind: str, **fields: Any) -> bytes:
        event = {"type": kind, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        return sse(event)
