"""What every family's parser shares: the final reading (content and calls) and how a region
that turned out not to be calls is given back as text."""

from __future__ import annotations

from dataclasses import dataclass, field

from tokenfactory.server.chat_events import ChatEvent, TextDelta, ToolCall
from tokenfactory.server.tool_calls.json_scan import ScanError
from tokenfactory.server.tool_calls.region import CallRegion, Layout


@dataclass
class RegionParser:
    """Base of the family parsers: `_text` and `_calls` are the final reading so far."""

    _text: list[str] = field(default_factory=list)
    _calls: list[ToolCall] = field(default_factory=list)
    _next_index: int = 0
    _region: CallRegion | None = None
    _marker: str = ""  # the text that opened the current region

    @property
    def text(self) -> str:
        return "".join(self._text)

    @property
    def tool_calls(self) -> list[ToolCall]:
        return list(self._calls)

    def _say(self, text: str, events: list[ChatEvent]) -> None:
        if text:
            self._text.append(text)
            events.append(TextDelta(text))

    def _open(self, layout: Layout, marker: str) -> None:
        self._region = CallRegion(layout, self._next_index)
        self._marker = marker

    def _feed_region(self, text: str, events: list[ChatEvent]) -> str | None:
        """Feed the open region; the text after its JSON once it ended, None while it goes on
        (or when it broke: then it was given back as text)."""
        region = self._region
        assert region is not None
        try:
            said, rest = region.feed(text)
        except ScanError:
            self._give_back(events)
            return None
        events.extend(said)
        return rest if region.done else None

    def _commit(self) -> None:
        """The open region's calls are complete: keep them."""
        region = self._region
        assert region is not None
        self._calls.extend(region.calls)
        self._next_index = region.first_index + len(region.calls)
        self._region = None

    def _give_back(self, events: list[ChatEvent]) -> None:
        """The open region is not calls after all: its raw text is content. In a stream that
        already announced one of its calls it is content of the final reading only, for the
        announcement cannot be taken back."""
        region = self._region
        assert region is not None
        raw = self._marker + region.buf
        if region.announced:
            self._text.append(raw)
            # numbering goes on past the abandoned calls: their indexes were said already
            self._next_index = region.first_index + len(region.calls) + 1
        else:
            self._say(raw, events)
        self._region = None

    def _unfinished(self, events: list[ChatEvent]) -> None:
        """Output ended inside a region (max_tokens or a stop string cut the call)."""
        if self._region is not None:
            self._give_back(events)


def held_prefix(text: str, marker: str) -> int:
    """How many trailing characters of `text` could be the start of `marker`."""
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:n]):
            return n
    return 0
