"""A strict, incremental JSON scanner for one object or list.

Fed text as it is generated, it says where values, keys and containers begin and end, so a
tool call's name and arguments can be streamed before the JSON is complete, and a malformed
call is caught at the first character that breaks it."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from enum import Enum, auto

_NUMBER = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?")
_LITERALS = ("true", "false", "null")
_WS = " \t\n\r"


class ScanError(ValueError):
    """The text is not JSON at `pos`."""

    def __init__(self, pos: int, why: str) -> None:
        super().__init__(f"{why} at {pos}")
        self.pos = pos


@dataclass(frozen=True)
class Key:
    """An object member's key, complete; `depth` is the object's depth (1 = top level)."""

    name: str
    depth: int


@dataclass(frozen=True)
class ValueStart:
    pos: int  # of the value's first character
    depth: int  # of the container holding it (0 = the top-level value)
    char: str


@dataclass(frozen=True)
class ValueEnd:
    end: int  # one past the value's last character
    depth: int


ScanEvent = Key | ValueStart | ValueEnd


class _S(Enum):
    VALUE = auto()  # a value may start (after ws)
    FIRST_KEY = auto()  # just after '{': a key or '}'
    KEY = auto()  # after ',' in an object: a key
    COLON = auto()
    AFTER = auto()  # after a value inside a container: ',' or the closing bracket
    FIRST_ITEM = auto()  # just after '[': a value or ']'
    STRING = auto()
    LITERAL = auto()
    DONE = auto()


@dataclass
class JsonScanner:
    """Scans one JSON object or list. `feed(text, start)` takes the next characters, whose absolute
    position is `start`; it returns what was recognised and raises `ScanError` at the first
    character that cannot be JSON. `done` once the top-level value ended (`end` is one past
    it); characters after that are not consumed."""

    state: _S = _S.VALUE
    stack: list[str] = field(default_factory=list)  # '{' or '['
    end: int | None = None
    _token_start: int = 0
    _token: list[str] = field(default_factory=list)
    _is_key: bool = False
    _escape: int = 0  # 0: none; 1: after '\'; 2..5: reading \u hex digits

    @property
    def done(self) -> bool:
        return self.state is _S.DONE

    @property
    def depth(self) -> int:
        return len(self.stack)

    def feed(self, text: str, start: int) -> tuple[list[ScanEvent], int]:
        """Returns the events and how many characters were consumed."""
        events: list[ScanEvent] = []
        for i, ch in enumerate(text):
            if self.state is _S.DONE:
                return events, i
            self._step(ch, start + i, events)
        return events, len(text)

    def _step(self, ch: str, pos: int, events: list[ScanEvent]) -> None:
        st = self.state
        if st is _S.STRING:
            self._string_char(ch, pos, events)
        elif st is _S.LITERAL:
            if ch.isalnum() or ch in "+-.":
                self._token.append(ch)
            else:
                self._end_literal(pos, events)
                self._step(ch, pos, events)  # the delimiter belongs to what follows
        elif ch in _WS:
            return
        elif st in (_S.VALUE, _S.FIRST_ITEM):
            if st is _S.FIRST_ITEM and ch == "]":
                self._close(pos, events)
            else:
                self._start_value(ch, pos, events)
        elif st in (_S.FIRST_KEY, _S.KEY):
            if st is _S.FIRST_KEY and ch == "}":
                self._close(pos, events)
            elif ch == '"':
                self.state, self._is_key = _S.STRING, True
                self._token_start, self._token = pos, ['"']
            else:
                raise ScanError(pos, "expected a key")
        elif st is _S.COLON:
            if ch != ":":
                raise ScanError(pos, "expected ':'")
            self.state = _S.VALUE
        elif st is _S.AFTER:
            top = self.stack[-1]
            if ch == ",":
                self.state = _S.KEY if top == "{" else _S.VALUE
            elif ch == ("}" if top == "{" else "]"):
                self._close(pos, events)
            else:
                raise ScanError(pos, "expected ',' or a closing bracket")
        else:
            raise ScanError(pos, "unexpected character")

    def _start_value(self, ch: str, pos: int, events: list[ScanEvent]) -> None:
        if not self.stack and ch not in "{[":
            raise ScanError(pos, "expected an object or a list")
        events.append(ValueStart(pos, self.depth, ch))
        if ch in "{[":
            self.stack.append(ch)
            self.state = _S.FIRST_KEY if ch == "{" else _S.FIRST_ITEM
        elif ch == '"':
            self.state, self._is_key = _S.STRING, False
            self._token_start, self._token = pos, ['"']
        elif ch == "-" or ch.isdigit() or ch in "tfn":
            self.state = _S.LITERAL
            self._token_start, self._token = pos, [ch]
        else:
            raise ScanError(pos, "expected a value")

    def _string_char(self, ch: str, pos: int, events: list[ScanEvent]) -> None:
        self._token.append(ch)
        if self._escape == 1:
            if ch == "u":
                self._escape = 2
            elif ch in '"\\/bfnrt':
                self._escape = 0
            else:
                raise ScanError(pos, "bad escape")
        elif self._escape >= 2:
            if ch not in "0123456789abcdefABCDEF":
                raise ScanError(pos, "bad \\u escape")
            self._escape = 0 if self._escape == 5 else self._escape + 1
        elif ch == "\\":
            self._escape = 1
        elif ch == '"':
            if self._is_key:
                events.append(Key(json.loads("".join(self._token)), self.depth))
                self.state = _S.COLON
            else:
                self._value_done(pos + 1, events)
        elif ord(ch) < 0x20:
            raise ScanError(pos, "control character in a string")

    def _end_literal(self, pos: int, events: list[ScanEvent]) -> None:
        token = "".join(self._token)
        if token not in _LITERALS and not _NUMBER.fullmatch(token):
            raise ScanError(self._token_start, f"not a JSON value: {token!r}")
        self._value_done(pos, events)

    def _close(self, pos: int, events: list[ScanEvent]) -> None:
        self.stack.pop()
        self._value_done(pos + 1, events)

    def _value_done(self, end: int, events: list[ScanEvent]) -> None:
        events.append(ValueEnd(end, self.depth))
        if self.stack:
            self.state = _S.AFTER
        else:
            self.state, self.end = _S.DONE, end
