"""OpenAI's chat and text completion bodies and stream chunks, shaped from chat events."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from tokenfactory.engine.sampling.logprobs import TokenLogprob
from tokenfactory.models.tokenizer import Tokenizer
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

__all__ = ["DONE", "ChatCompletionShaper", "TextCompletionShaper", "Usage"]

DONE = b"data: [DONE]\n\n"


@dataclass
class _Shaper:
    """What chat and text completions share: the envelope, usage chunk and logprob spelling."""

    context: ChatContext | None = None

    def start(self, context: ChatContext) -> None:
        self.context = context

    @property
    def ctx(self) -> ChatContext:
        assert self.context is not None, "start() is called before shaping"
        return self.context

    def opening(self) -> list[bytes]:
        return []

    def failure(self, error: APIError) -> bytes:
        return error.sse_event()

    def _envelope(self, obj: str, choices: list, service_tier: str) -> dict:
        ctx = self.ctx
        return {
            "id": ctx.request_id,
            "object": obj,
            "created": ctx.created,
            "model": ctx.model,
            "choices": choices,
            "service_tier": service_tier,
            "system_fingerprint": ctx.fingerprint,
        }

    def _event(self, obj: str, choices: list, service_tier: str, usage: dict | None) -> bytes:
        body = self._envelope(obj, choices, service_tier)
        body["usage"] = usage
        return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"

    def _token(self, token_id: int) -> str:
        return spell_token(self.ctx.tokenizer, token_id)


def spell_token(tokenizer: Tokenizer | None, token_id: int) -> str:
    if tokenizer is None:
        return f"<{token_id}>"
    return tokenizer.decode([token_id], skip_special_tokens=False)


def finite(x: float) -> float:
    # JSON has no -inf; OpenAI reports impossible tokens as a very negative number.
    return x if x > -9999.0 else -9999.0


# -- chat completions ----------------------------------------------------------------------------


@dataclass
class ChatCompletionShaper(_Shaper):
    """`/v1/chat/completions`: both the stream shaper and the body shaper."""

    _first_chunk: bool = field(default=True)

    def body(self, result: ChatResult, logprobs: list[TokenLogprob] | None) -> dict:
        message: dict = {"role": "assistant", "content": result.text, "refusal": None}
        if result.tool_calls:
            message["content"] = result.text or None
            message["tool_calls"] = [
                {
                    "id": call.call_id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": call.arguments},
                }
                for call in result.tool_calls
            ]
        choice = {
            "index": 0,
            "message": message,
            "logprobs": self._logprobs(logprobs),
            "finish_reason": result.finish_reason,
        }
        body = self._envelope("chat.completion", [choice], result.service_tier)
        body["usage"] = result.usage.to_dict()
        return body

    def events(self, events: list[ChatEvent], logprobs: list[TokenLogprob] | None) -> list[bytes]:
        """One chunk per run of text and per tool-call piece; an engine step whose text is
        held back (or empty) still gets a content "" chunk, which carries its logprobs."""
        deltas = _chat_deltas(events) or [{"content": ""}]
        out = []
        for delta in deltas:
            out.append(self._chunk(delta, None, self.ctx.service_tier, logprobs))
            logprobs = [] if logprobs is not None else None  # said once, on the first chunk
        return out

    def closing(self, result: ChatResult) -> list[bytes]:
        out = [self._chunk({"content": ""}, result.finish_reason, result.service_tier, None)]
        if self.ctx.include_usage:
            usage = result.usage.to_dict()
            out.append(self._event("chat.completion.chunk", [], result.service_tier, usage))
        out.append(DONE)
        return out

    def _chunk(
        self,
        delta: dict,
        finish_reason: str | None,
        service_tier: str,
        logprobs: list[TokenLogprob] | None,
    ) -> bytes:
        if self._first_chunk:
            delta = {"role": "assistant", **delta}
            if "content" not in delta:
                delta["content"] = None
            self._first_chunk = False
        choice = {
            "index": 0,
            "delta": delta,
            "logprobs": self._logprobs(logprobs),
            "finish_reason": finish_reason,
        }
        return self._event("chat.completion.chunk", [choice], service_tier, None)

    def _logprobs(self, logprobs: list[TokenLogprob] | None) -> dict | None:
        if logprobs is None:
            return None
        content = []
        for lp in logprobs:
            tok = self._token(lp.token_id)
            content.append(
                {
                    "token": tok,
                    "logprob": finite(lp.logprob),
                    "bytes": list(tok.encode()),
                    "top_logprobs": [
                        {
                            "token": (t := self._token(i)),
                            "logprob": finite(v),
                            "bytes": list(t.encode()),
                        }
                        for i, v in lp.top
                    ],
                }
            )
        return {"content": content, "refusal": None}


def _chat_deltas(events: list[ChatEvent]) -> list[dict]:
    """Chat-completion deltas for a run of events: consecutive text joins into one content
    delta; a call's start carries its id, type, name and empty arguments, as OpenAI's does."""
    deltas: list[dict] = []
    for ev in events:
        if isinstance(ev, TextDelta):
            if not ev.text:
                continue
            if deltas and set(deltas[-1]) == {"content"}:
                deltas[-1]["content"] += ev.text
            else:
                deltas.append({"content": ev.text})
        elif isinstance(ev, ToolCallStart):
            call = {
                "index": ev.index,
                "id": ev.call_id,
                "type": "function",
                "function": {"name": ev.name, "arguments": ""},
            }
            deltas.append({"tool_calls": [call]})
        elif isinstance(ev, ToolCallArguments):
            if not ev.fragment:
                continue
            deltas.append(
                {"tool_calls": [{"index": ev.index, "function": {"arguments": ev.fragment}}]}
            )
    return deltas


# -- text completions ----------------------------------------------------------------------------


@dataclass
class TextCompletionShaper(_Shaper):
    """`/v1/completions`: text only (tool calls are a chat feature)."""

    def body(self, result: ChatResult, logprobs: list[TokenLogprob] | None) -> dict:
        choice = {
            "index": 0,
            "text": result.text,
            "logprobs": self._logprobs(logprobs),
            "finish_reason": result.finish_reason,
        }
        body = self._envelope("text_completion", [choice], result.service_tier)
        body["usage"] = result.usage.to_dict()
        return body

    def events(self, events: list[ChatEvent], logprobs: list[TokenLogprob] | None) -> list[bytes]:
        text = "".join(ev.text for ev in events if isinstance(ev, TextDelta))
        return [self._chunk(text, None, self.ctx.service_tier, logprobs)]

    def closing(self, result: ChatResult) -> list[bytes]:
        out = [self._chunk("", result.finish_reason, result.service_tier, None)]
        if self.ctx.include_usage:
            out.append(
                self._event("text_completion", [], result.service_tier, result.usage.to_dict())
            )
        out.append(DONE)
        return out

    def _chunk(
        self,
        text: str,
        finish_reason: str | None,
        service_tier: str,
        logprobs: list[TokenLogprob] | None,
    ) -> bytes:
        choice = {
            "index": 0,
            "text": text,
            "logprobs": self._logprobs(logprobs),
            "finish_reason": finish_reason,
        }
        return self._event("text_completion", [choice], service_tier, None)

    def _logprobs(self, logprobs: list[TokenLogprob] | None) -> dict | None:
        if logprobs is None:
            return None
        return {
            "tokens": [self._token(lp.token_id) for lp in logprobs],
            "token_logprobs": [finite(lp.logprob) for lp in logprobs],
            "top_logprobs": [{self._token(i): finite(v) for i, v in lp.top} for lp in logprobs],
            "text_offset": [],
        }
