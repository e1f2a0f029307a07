"""Llama 3.x JSON tool calls: the reply is `{"name": .., "parameters": {..}}` (or
"arguments"), optionally after `<|python_tag|>`, several separated by `;`. Only a reply that
begins so is read as calls; anything else is content."""

from __future__ import annotations

from dataclasses import dataclass

from tokenfactory.server.chat_events import ChatEvent
from tokenfactory.server.tool_calls.base import RegionParser

PYTHON_TAG = "<|python_tag|>"


@dataclass
class Llama3JsonParser(RegionParser):
    _mode: str = "start"  # "start" (nothing but spacing yet), "calls", "text"
    _pending: str = ""
    _tail: str | None = None  # after a call's JSON: a separator, another call, or the end

    def feed(self, delta: str) -> list[ChatEvent]:
        events: list[ChatEvent] = []
        text: str | None = delta
        while text:
            if self._mode == "text":
                self._say(text, events)
                text = ""
            elif self._mode == "start":
                text = self._start(text, events)
            elif self._tail is not None:
                text = self._between(text, events)
            else:
                rest = self._feed_region(text, events)
                if self._region is None:  # not calls: the rest of the reply is content
                    self._mode = "text"
                elif rest is not None:
                    self._tail = ""
                text = rest
        return events

    def finish(self) -> list[ChatEvent]:
        events: list[ChatEvent] = []
        if self._tail is not None:
            self._commit()
            if self._tail.strip():
                self._say(self._tail, events)
            self._tail = None
        self._unfinished(events)
        self._say(self._pending, events)
        self._pending = ""
        return events

    def _start(self, text: str, events: list[ChatEvent]) -> str:
        buf = self._pending + text
        body = buf.lstrip()
        if not body or PYTHON_TAG.startswith(body):
            self._pending = buf  # spacing, or maybe the tag: wait
            return ""
        self._pending = ""
        self._mode = "calls"
        if body.startswith(PYTHON_TAG):
            lead = buf[: len(buf) - len(body) + len(PYTHON_TAG)]
            self._open("object", lead)
            return body[len(PYTHON_TAG) :]
        if body.startswith("{"):
            self._open("object", buf[: len(buf) - len(body)])
            return body
        self._mode = "text"
        return buf

    def _between(self, text: str, events: list[ChatEvent]) -> str:
        assert self._tail is not None
        tail = self._tail + text
        body = tail.lstrip()
        if not body:
            self._tail = tail
            return ""
        self._commit()
        self._tail = None
        if body.startswith(";"):
            body = body[1:]
        if body.lstrip().startswith("{") or not body.strip():
            self._open("object", tail[: len(tail) - len(body.lstrip())])
            return body.lstrip()
        # other text after the calls: content
        self._mode = "text"
        return tail
