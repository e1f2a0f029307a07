"""Calls between tags: hermes (`<tool_call>{"name": .., "arguments": {..}}</tool_call>`, Qwen
2.5 and 3, NousHermes) and SmolLM2 (the same tags around a JSON list of calls)."""

from __future__ import annotations

from dataclasses import dataclass

from tokenfactory.server.chat_events import ChatEvent
from tokenfactory.server.tool_calls.base import RegionParser, held_prefix
from tokenfactory.server.tool_calls.region import Layout

OPEN_TAG = "<tool_call>"
CLOSE_TAG = "</tool_call>"


@dataclass
class TaggedCallParser(RegionParser):
    """Text outside the tags is content; each tagged region holds one call (`object`) or a
    list of calls (`list`). A region whose JSON is complete counts even if its closing tag
    never comes (small models often drop it)."""

    layout: Layout = "object"
    _pending: str = ""  # outside text that may be the start of the open tag
    _tail: str | None = None  # after a region's JSON ended: text that may be the close tag

    def feed(self, delta: str) -> list[ChatEvent]:
        events: list[ChatEvent] = []
        text: str | None = delta
        while text:
            if self._tail is not None:
                text = self._after_region(text, events)
            elif self._region is not None:
                rest = self._feed_region(text, events)
                if rest is not None:
                    self._tail = ""
                text = rest
            else:
                text = self._outside(text, events)
        return events

    def finish(self) -> list[ChatEvent]:
        events: list[ChatEvent] = []
        if self._tail is not None:
            self._commit()
            self._say(self._tail, events)
            self._tail = None
        self._unfinished(events)
        if self._pending.strip() or not self._calls:  # whitespace after calls is no content
            self._say(self._pending, events)
        self._pending = ""
        return events

    def _outside(self, text: str, events: list[ChatEvent]) -> str:
        buf = self._pending + text
        at = buf.find(OPEN_TAG)
        if at < 0:
            keep = held_prefix(buf, OPEN_TAG)
            if self._calls and not buf[: len(buf) - keep].strip():
                keep = len(buf)  # between or after calls: content only if more than spacing
            self._say(buf[: len(buf) - keep], events)
            self._pending = buf[len(buf) - keep :]
            return ""
        if buf[:at].strip() or not self._calls:  # spacing between calls is no content
            self._say(buf[:at], events)
        self._pending = ""
        self._open(self.layout, OPEN_TAG)
        return buf[at + len(OPEN_TAG) :]

    def _after_region(self, text: str, events: list[ChatEvent]) -> str:
        assert self._tail is not None
        tail = self._tail + text
        stripped = tail.lstrip()
        if stripped.startswith(CLOSE_TAG):
            self._commit()
            self._tail = None
            return stripped[len(CLOSE_TAG) :]
        if CLOSE_TAG.startswith(stripped):  # maybe the close tag, not all there yet
            self._tail = tail
            return ""
        # no closing tag: the calls stand, what follows is content again
        self._commit()
        self._tail = None
        return tail


def hermes_parser() -> TaggedCallParser:
    return TaggedCallParser(layout="object")


def smollm2_parser() -> TaggedCallParser:
    return TaggedCallParser(layout="list")
