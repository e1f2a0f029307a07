"""Response bodies and stream chunks in OpenAI's shapes, for chat and text completions."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from tokenfactory.engine.sampling.logprobs import TokenLogprob
from tokenfactory.models.tokenizer import Tokenizer


@dataclass
class Usage:
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0

    def to_dict(self) -> dict:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
        }


@dataclass
class ResponseShaper:
    """Builds the bodies for one request; `kind` is "chat" or "text"."""

    kind: str
    request_id: str
    model: str
    created: int
    tokenizer: Tokenizer | None
    fingerprint: str
    _first_chunk: bool = field(default=True)

    @property
    def object_name(self) -> str:
        return "chat.completion" if self.kind == "chat" else "text_completion"

    # -- non-streaming ------------------------------------------------------------------------

    def full(
        self,
        text: str,
        finish_reason: str,
        usage: Usage,
        service_tier: str,
        logprobs: list[TokenLogprob] | None,
    ) -> dict:
        if self.kind == "chat":
            choice = {
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": None},
                "logprobs": self._chat_logprobs(logprobs),
                "finish_reason": finish_reason,
            }
        else:
            choice = {
                "index": 0,
                "text": text,
                "logprobs": self._text_logprobs(logprobs),
                "finish_reason": finish_reason,
            }
        return {
            "id": self.request_id,
            "object": self.object_name,
            "created": self.created,
            "model": self.model,
            "choices": [choice],
            "usage": usage.to_dict(),
            "service_tier": service_tier,
            "system_fingerprint": self.fingerprint,
        }

    # -- streaming ----------------------------------------------------------------------------

    def chunk(
        self,
        text: str,
        finish_reason: str | None,
        service_tier: str,
        logprobs: list[TokenLogprob] | None,
    ) -> bytes:
        if self.kind == "chat":
            delta: dict = {"content": text}
            if self._first_chunk:
                delta = {"role": "assistant", "content": text}
                self._first_chunk = False
            choice = {
                "index": 0,
                "delta": delta,
                "logprobs": self._chat_logprobs(logprobs),
                "finish_reason": finish_reason,
            }
        else:
            choice = {
                "index": 0,
                "text": text,
                "logprobs": self._text_logprobs(logprobs),
                "finish_reason": finish_reason,
            }
        return self._event([choice], service_tier, None)

    def usage_chunk(self, usage: Usage, service_tier: str) -> bytes:
        return self._event([], service_tier, usage.to_dict())

    def _event(self, choices: list, service_tier: str, usage: dict | None) -> bytes:
        body = {
            "id": self.request_id,
            "object": "chat.completion.chunk" if self.kind == "chat" else "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": choices,
            "service_tier": service_tier,
            "system_fingerprint": self.fingerprint,
            "usage": usage,
        }
        return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"

    # -- logprobs -----------------------------------------------------------------------------

    def _token(self, token_id: int) -> str:
        if self.tokenizer is None:
            return f"<{token_id}>"
        return self.tokenizer.decode([token_id], skip_special_tokens=False)

    def _chat_logprobs(self, logprobs: list[TokenLogprob] | None) -> dict | None:
        if logprobs is None:
            return None
        content = []
        for lp in logprobs:
            tok = self._token(lp.token_id)
            content.append(
                {
                    "token": tok,
                    "logprob": _finite(lp.logprob),
                    "bytes": list(tok.encode()),
                    "top_logprobs": [
                        {
                            "token": (t := self._token(i)),
                            "logprob": _finite(v),
                            "bytes": list(t.encode()),
                        }
                        for i, v in lp.top
                    ],
                }
            )
        return {"content": content, "refusal": None}

    def _text_logprobs(self, logprobs: list[TokenLogprob] | None) -> dict | None:
        if logprobs is None:
            return None
        tokens = [self._token(lp.token_id) for lp in logprobs]
        return {
            "tokens": tokens,
            "token_logprobs": [_finite(lp.logprob) for lp in logprobs],
            "top_logprobs": [{self._token(i): _finite(v) for i, v in lp.top} for lp in logprobs],
            "text_offset": [],
        }


def _finite(x: float) -> float:
    # JSON has no -inf; OpenAI reports impossible tokens as a very negative number.
    return x if x > -9999.0 else -9999.0


DONE = b"data: [DONE]\n\n"
