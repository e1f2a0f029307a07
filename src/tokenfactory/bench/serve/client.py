"""One streamed request over HTTP: timestamps, usage, delivered tier and errors.

Definitions (as vLLM's `bench serve`): TTFT is from sending the request to the first chunk
that carries output text; ITL are the gaps between successive content chunks; E2EL runs to the
end of the stream. Output tokens come from the final `usage.completion_tokens` when the
server reports it, else one per content chunk.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import httpx

_DATA = "data:"


@dataclass(slots=True)
class RequestRecord:
    id: int
    tier: str | None  # requested (None: the key's default)
    session: str | None = None
    step: int = 0
    planned_input_tokens: int = 0
    max_tokens: int = 0
    start: float = 0.0  # seconds since the run started
    t_first: float | None = None  # absolute perf_counter of the first content chunk
    # ... of the last chunk of the completion after it: a last token without text (an
    # end-of-sequence token) is in `completion_tokens`, so its chunk ends the decode time.
    t_last: float | None = None
    t_end: float | None = None  # ... of the end of the stream
    t_send: float = 0.0  # ... when the request was sent
    itl: list[float] = field(default_factory=list)
    chunks: int = 0
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_tokens: int | None = None
    delivered_tier: str | None = None
    finish_reason: str | None = None
    error_kind: str | None = None  # http | stream | connection | timeout | protocol
    error_type: str | None = None
    error_status: int | None = None
    error_message: str | None = None
    retry_after: str | None = None
    text: str | None = None  # kept only when asked (agent sessions)
    task_id: str | None = None  # sent as X-Task-Id

    @property
    def ok(self) -> bool:
        return self.error_kind is None

    @property
    def output_tokens(self) -> int:
        return self.completion_tokens if self.completion_tokens is not None else self.chunks

    @property
    def ttft(self) -> float | None:
        return None if self.t_first is None else self.t_first - self.t_send

    @property
    def e2el(self) -> float | None:
        return None if self.t_end is None else self.t_end - self.t_send

    @property
    def tpot(self) -> float | None:
        """(E2EL - TTFT) / (output_tokens - 1), as vLLM defines it."""
        n = self.output_tokens
        if not self.ok or self.ttft is None or self.e2el is None or n < 2:
            return None
        return (self.e2el - self.ttft) / (n - 1)

    @property
    def decode_tps(self) -> float | None:
        """Tokens/s after the first token: (output_tokens - 1) / (t_last - t_first), from the
        first content chunk to the completion's last chunk (see `t_last`)."""
        n = self.output_tokens
        if not self.ok or self.t_first is None or self.t_last is None or n < 2:
            return None
        span = self.t_last - self.t_first
        return (n - 1) / span if span > 0 else None

    def fail(self, kind: str, type_: str, message: str, status: int | None = None) -> None:
        self.error_kind, self.error_type = kind, type_
        self.error_message, self.error_status = message[:300], status


def _error_fields(doc: object) -> tuple[str, str]:
    if isinstance(doc, dict) and isinstance(doc.get("error"), dict):
        err = doc["error"]
        return str(err.get("type") or err.get("code") or "error"), str(err.get("message", ""))
    return "", ""


async def stream_request(
    client: httpx.AsyncClient,
    url: str,
    body: dict,
    headers: dict[str, str],
    rec: RequestRecord,
    chat: bool,
    keep_text: bool = False,
) -> RequestRecord:
    """Send one streaming request and fill `rec`; never raises for request failures."""
    parts: list[str] | None = [] if keep_text else None
    done = False
    clock = time.perf_counter
    rec.t_send = clock()
    try:
        async with client.stream("POST", url, json=body, headers=headers) as resp:
            if resp.status_code != 200:
                raw = await resp.aread()
                try:
                    type_, message = _error_fields(json.loads(raw))
                except ValueError:
                    type_, message = "", raw[:200].decode("utf-8", "replace")
                rec.retry_after = resp.headers.get("retry-after")
                rec.fail("http", type_ or f"http_{resp.status_code}", message, resp.status_code)
                rec.t_end = clock()
                return rec
            last = None
            async for line in resp.aiter_lines():
                if not line.startswith(_DATA):
                    continue
                payload = line[5:].strip()
                if payload == "[DONE]":
                    done = True
                    break
                now = clock()
                try:
                    doc = json.loads(payload)
                except ValueError:
                    rec.fail("protocol", "bad_json", payload[:200], 200)
                    break
                if "error" in doc:
                    type_, message = _error_fields(doc)
                    rec.fail("stream", type_ or "stream_error", message, 200)
                    break
                choices = doc.get("choices")
                if choices:
                    choice = choices[0]
                    if chat:
                        delta = choice.get("delta") or {}
                        content = delta.get("content") or delta.get("reasoning_content")
                    else:
                        content = choice.get("text")
                    if content:
                        if last is None:
                            rec.t_first = now
                        else:
                            rec.itl.append(now - last)
                        last = now
                        rec.chunks += 1
                        if parts is not None:
                            parts.append(content)
                    if last is not None:
                        rec.t_last = now
                    if choice.get("finish_reason"):
                        rec.finish_reason = choice["finish_reason"]
                usage = doc.get("usage")
                if usage:
                    rec.prompt_tokens = usage.get("prompt_tokens")
                    rec.completion_tokens = usage.get("completion_tokens")
                    details = usage.get("prompt_tokens_details") or {}
                    rec.cached_tokens = details.get("cached_tokens")
                if doc.get("service_tier"):
                    rec.delivered_tier = doc["service_tier"]
            if rec.ok and not done:
                rec.fail("protocol", "incomplete_stream", "stream ended without [DONE]", 200)
    except httpx.TimeoutException as exc:
        rec.fail("timeout", type(exc).__name__, str(exc) or "timed out")
    except httpx.TransportError as exc:
        rec.fail("connection", type(exc).__name__, str(exc) or type(exc).__name__)
    rec.t_end = clock()
    if parts is not None:
        rec.text = "".join(parts)
    return rec
