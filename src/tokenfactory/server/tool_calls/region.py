"""One call region: the JSON after a call marker, read as it is generated.

A region holds one call object (`{"name": .., "arguments": {..}}`, hermes and Llama) or a list
of them (SmolLM2). The region says `ToolCallStart` once a call's name is complete and streams
the arguments' JSON text as it grows; it raises `ScanError` at the first character that makes
it something other than calls, so the family parser can give the text back as content.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Literal

from tokenfactory.server.chat_events import (
    ChatEvent,
    ToolCall,
    ToolCallArguments,
    ToolCallStart,
    new_call_id,
)
from tokenfactory.server.tool_calls.json_scan import (
    JsonScanner,
    Key,
    ScanError,
    ValueEnd,
    ValueStart,
)

Layout = Literal["object", "list"]
NAME_KEY = "name"
ARGUMENT_KEYS = ("arguments", "parameters")  # hermes and SmolLM2 say "arguments"; Llama 3 either
IGNORED_KEYS = ("type", "id")  # {"type": "function", ...} appears in some models' output


@dataclass
class _Call:
    index: int
    call_id: str = field(default_factory=new_call_id)
    key: str | None = None
    name_start: int | None = None
    name: str | None = None
    args_start: int | None = None
    args_end: int | None = None
    args_sent: int | None = None  # position up to which arguments were said
    started: bool = False


@dataclass
class CallRegion:
    """`first_index`: the index its first call gets (calls are numbered across regions)."""

    layout: Layout
    first_index: int
    buf: str = ""
    calls: list[ToolCall] = field(default_factory=list)  # complete calls, in order
    announced: bool = False  # a ToolCallStart was said for one of its calls
    _scanner: JsonScanner = field(default_factory=JsonScanner)
    _call: _Call | None = None

    @property
    def done(self) -> bool:
        return self._scanner.done

    @property
    def call_depth(self) -> int:
        """Depth of the container that holds a call object (0: the region is the object)."""
        return 0 if self.layout == "object" else 1

    def feed(self, text: str) -> tuple[list[ChatEvent], str]:
        """Events for `text`, and what is left of it after the region's JSON ended.
        A `ScanError` leaves all of `text` in `buf`, for the caller to give back as text."""
        start = len(self.buf)
        try:
            scanned, consumed = self._scanner.feed(text, start)
        except ScanError:
            self.buf += text
            raise
        self.buf += text[:consumed]
        events: list[ChatEvent] = []
        try:
            for ev in scanned:
                self._on(ev, events)
        except ScanError:
            self.buf += text[consumed:]
            raise
        self._say_arguments(events)
        return events, text[consumed:]

    def _on(self, ev: Key | ValueStart | ValueEnd, events: list[ChatEvent]) -> None:
        d = self.call_depth
        if isinstance(ev, ValueStart):
            if ev.depth == 0 and self.layout == "list" and ev.char != "[":
                raise ScanError(ev.pos, "expected a list of calls")
            if ev.depth == d:
                if ev.char != "{":
                    raise ScanError(ev.pos, "a call is an object")
                self._say_arguments(events)
                self._call = _Call(self.first_index + len(self.calls))
            elif ev.depth == d + 1:
                self._member_start(ev)
        elif isinstance(ev, Key) and ev.depth == d + 1:
            call = self._current()
            if ev.name != NAME_KEY and ev.name not in ARGUMENT_KEYS + IGNORED_KEYS:
                raise ScanError(len(self.buf), f"unknown key {ev.name!r} in a call")
            call.key = ev.name
        elif isinstance(ev, ValueEnd):
            if ev.depth == d + 1:
                self._member_end(ev, events)
            elif ev.depth == d and self._call is not None:
                self._finish_call(ev.end, events)

    def _current(self) -> _Call:
        if self._call is None:
            raise ScanError(len(self.buf), "no call is open")
        return self._call

    def _member_start(self, ev: ValueStart) -> None:
        call = self._current()
        if call.key == NAME_KEY:
            if ev.char != '"':
                raise ScanError(ev.pos, "a call's name is a string")
            call.name_start = ev.pos
        elif call.key in ARGUMENT_KEYS:
            if ev.char != "{" or call.args_start is not None:
                raise ScanError(ev.pos, "a call's arguments are one object")
            call.args_start = call.args_sent = ev.pos

    def _member_end(self, ev: ValueEnd, events: list[ChatEvent]) -> None:
        call = self._current()
        if call.key == NAME_KEY and call.name_start is not None:
            name = json.loads(self.buf[call.name_start : ev.end])
            if not name or call.name is not None:
                raise ScanError(ev.end, "a call needs one non-empty name")
            call.name = name
            call.started = True
            self.announced = True
            events.append(ToolCallStart(call.index, call.call_id, name))
        elif call.key in ARGUMENT_KEYS:
            call.args_end = ev.end

    def _say_arguments(self, events: list[ChatEvent]) -> None:
        """The arguments text generated since last said, once the call's name was said."""
        call = self._call
        if call is None or not call.started or call.args_sent is None:
            return
        upto = call.args_end if call.args_end is not None else len(self.buf)
        if upto > call.args_sent:
            events.append(ToolCallArguments(call.index, self.buf[call.args_sent : upto]))
            call.args_sent = upto

    def _finish_call(self, end: int, events: list[ChatEvent]) -> None:
        call = self._call
        assert call is not None
        if call.name is None:
            raise ScanError(end, "a call without a name")
        self._say_arguments(events)
        if call.args_start is None:
            arguments = "{}"
            events.append(ToolCallArguments(call.index, arguments))
        else:
            assert call.args_end is not None
            arguments = self.buf[call.args_start : call.args_end]
        self.calls.append(ToolCall(call.call_id, call.name, arguments))
        self._call = None
