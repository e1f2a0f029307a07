"""Streaming detokenization: token ids in, text deltas out, one token at a time.

Decoding each token alone is wrong twice over: a UTF-8 character can be split across byte
tokens, and some decoders depend on neighbours (SentencePiece strips the first token's
leading space). So, like vLLM, we decode a short window that starts one emitted token back
(`prefix_offset`) and emit what it adds beyond the text already emitted up to `read_offset`.
While the window ends in U+FFFD the last character is incomplete: hold it back.

Cost per token is one decode of a window of a few tokens, independent of stream length.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

REPLACEMENT_CHAR = "\ufffd"

# How many prompt tokens to decode as context before the first generated one.
_PROMPT_CONTEXT = 5


class IncrementalDetokenizer:
    """Turns a stream of token ids into text deltas.

    Without `prompt_ids`, the concatenation of all deltas plus `flush()` equals
    `decode(all ids)`. With them, it equals the text the generated tokens add after the
    prompt (so a leading space a SentencePiece decoder would strip is kept).
    """

    def __init__(
        self,
        decode: Callable[[Sequence[int]], str],
        prompt_ids: Sequence[int] | None = None,
    ) -> None:
        self._decode = decode
        self._ids: list[int] = list(prompt_ids or ())
        self._read_offset = len(self._ids)
        self._prefix_offset = max(self._read_offset - _PROMPT_CONTEXT, 0)
        self._prefix_text = self._window_text(self._prefix_offset, self._read_offset)

    def _window_text(self, start: int, end: int) -> str:
        return self._decode(self._ids[start:end]) if end > start else ""

    def add(self, token_id: int) -> str:
        """Append one token; return the text it completes (possibly empty)."""
        self._ids.append(token_id)
        text = self._window_text(self._prefix_offset, len(self._ids))
        if text.endswith(REPLACEMENT_CHAR):
            return ""  # an incomplete character: wait for its remaining bytes
        return self._advance(text)

    def flush(self) -> str:
        """Text held back at the end of the stream (bytes that never formed a character)."""
        text = self._window_text(self._prefix_offset, len(self._ids))
        return self._advance(text) if len(self._ids) > self._read_offset else ""

    def _advance(self, text: str) -> str:
        delta = text[len(self._prefix_text) :]
        # The next window starts at the first token not yet covered by the previous one.
        self._prefix_offset = self._read_offset
        self._read_offset = len(self._ids)
        self._prefix_text = self._window_text(self._prefix_offset, self._read_offset)
        return delta

    @property
    def token_ids(self) -> list[int]:
        return self._ids
