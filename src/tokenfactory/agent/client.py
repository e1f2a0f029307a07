"""One chat-completions request with tools, over HTTP to any OpenAI-compatible endpoint.

Every request of a run carries the run's task id (`X-Task-Id`) and one `prompt_cache_key`, so
a factory bills the run as one task and keeps its growing prefix warm.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import httpx


@dataclass(frozen=True)
class Endpoint:
    api_url: str  # ends in /v1
    api_key: str | None
    model: str | None  # None: the endpoint's first model
    service_tier: str | None = None


@dataclass(frozen=True)
class ToolCallRequest:
    call_id: str
    name: str
    arguments: str  # JSON text, as the model wrote it


@dataclass(frozen=True)
class TurnUsage:
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0


@dataclass(frozen=True)
class ModelTurn:
    """One response: the assistant's text and tool calls, what it cost in tokens, the tier."""

    text: str
    tool_calls: list[ToolCallRequest]
    finish_reason: str | None
    usage: TurnUsage
    service_tier: str | None
    raw_message: dict = field(repr=False, default_factory=dict)

    def assistant_message(self) -> dict:
        """The message to append to the conversation (OpenAI shape)."""
        message: dict = {"role": "assistant", "content": self.text or None}
        if self.tool_calls:
            message["tool_calls"] = [
                {
                    "id": c.call_id,
                    "type": "function",
                    "function": {"name": c.name, "arguments": c.arguments},
                }
                for c in self.tool_calls
            ]
        return message


class FactoryError(Exception):
    """The endpoint refused or failed a request (its error message kept), or did not answer."""

    def __init__(
        self, message: str, status: int | None = None, retry_after_s: float | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after_s = retry_after_s  # the endpoint asked to come back after this long


class ChatClient:
    def __init__(
        self,
        endpoint: Endpoint,
        task_id: str,
        prompt_cache_key: str,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.task_id = task_id
        self.prompt_cache_key = prompt_cache_key
        headers = {"X-Task-Id": task_id}
        if endpoint.api_key:
            headers["Authorization"] = f"Bearer {endpoint.api_key}"
        self._http = httpx.Client(headers=headers, transport=transport)

    def close(self) -> None:
        self._http.close()

    def model(self) -> str:
        """The model to ask: the one given, else the endpoint's first."""
        if self.endpoint.model:
            return self.endpoint.model
        doc = self._get("/models")
        try:
            return str(doc["data"][0]["id"])
        except (KeyError, IndexError, TypeError):
            raise FactoryError("the endpoint lists no models; pass --model") from None

    def tiers(self) -> dict | None:
        """The endpoint's `GET /v1/tiers` body, or None where it publishes none (an HTTP error
        status); FactoryError when the endpoint does not answer at all."""
        try:
            return self._get("/tiers")
        except FactoryError as exc:
            if exc.status is None:
                raise
            return None

    def task_usage(self) -> dict | None:
        """What the factory's ledger holds for this run's task (`GET /v1/usage?by=task`, the
        key's row whose task_id is ours), or None where the endpoint does not say."""
        try:
            doc = self._get("/usage?by=task")
        except FactoryError:
            return None
        rows = doc.get("data")
        if not isinstance(rows, list):
            return None
        mine = [r for r in rows if isinstance(r, dict) and r.get("task_id") == self.task_id]
        return mine[0] if mine else None

    def complete(
        self,
        model: str,
        messages: list[dict],
        tools: list[dict],
        tool_choice: str,
        max_tokens: int,
        timeout_s: float,
        temperature: float | None = None,
    ) -> ModelTurn:
        body: dict = {
            "model": model,
            "messages": messages,
            "tools": tools,
            "tool_choice": tool_choice,
            "max_tokens": max_tokens,
            "prompt_cache_key": self.prompt_cache_key,
        }
        if temperature is not None:
            body["temperature"] = temperature
        if self.endpoint.service_tier:
            body["service_tier"] = self.endpoint.service_tier
        doc = self._post("/chat/completions", body, timeout_s)
        return parse_turn(doc)

    # -- HTTP -------------------------------------------------------------------------------

    def _get(self, path: str) -> dict:
        return self._send("GET", path, None, 30.0)

    def _post(self, path: str, body: dict, timeout_s: float) -> dict:
        return self._send("POST", path, body, timeout_s)

    def _send(self, method: str, path: str, body: dict | None, timeout_s: float) -> dict:
        url = self.endpoint.api_url + path
        try:
            resp = self._http.request(method, url, json=body, timeout=max(timeout_s, 0.001))
        except httpx.TimeoutException:
            raise FactoryError(f"no answer from {url} within {timeout_s:.0f} s") from None
        except httpx.HTTPError as exc:
            raise FactoryError(f"cannot reach {url}: {exc}") from None
        try:
            doc = resp.json()
        except ValueError:
            doc = None
        if resp.status_code != 200:
            raise FactoryError(f"{resp.status_code} from {url}: {_error_text(doc, resp)}",
                               resp.status_code, _retry_after(resp))
        if not isinstance(doc, dict):
            raise FactoryError(f"{url} answered with something that is not a JSON object")
        return doc


def _retry_after(resp: httpx.Response) -> float | None:
    """Seconds from a 429/503's Retry-After header (the factory sends it when a rate limit or
    an overload will pass); None when absent or not a number of seconds."""
    if resp.status_code not in (429, 503):
        return None
    try:
        return max(float(resp.headers["retry-after"]), 0.0)
    except (KeyError, ValueError):
        return None


def _error_text(doc: object, resp: httpx.Response) -> str:
    if isinstance(doc, dict) and isinstance(doc.get("error"), dict):
        err = doc["error"]
        param = f" (param {err['param']})" if err.get("param") else ""
        return f"{err.get('message', '')}{param}"
    return resp.text[:300]


def parse_turn(doc: dict) -> ModelTurn:
    """A chat-completions body -> ModelTurn (tolerant of missing optional fields)."""
    try:
        choice = doc["choices"][0]
        message = choice["message"]
    except (KeyError, IndexError, TypeError):
        raise FactoryError("the response has no choices[0].message") from None
    calls = []
    for i, c in enumerate(message.get("tool_calls") or []):
        fn = c.get("function") or {}
        calls.append(
            ToolCallRequest(
                call_id=str(c.get("id") or f"call_{i}"),
                name=str(fn.get("name", "")),
                arguments=str(fn.get("arguments") or "{}"),
            )
        )
    usage = doc.get("usage") or {}
    details = usage.get("prompt_tokens_details") or {}
    return ModelTurn(
        text=message.get("content") or "",
        tool_calls=calls,
        finish_reason=choice.get("finish_reason"),
        usage=TurnUsage(
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            cached_tokens=int(details.get("cached_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
        ),
        service_tier=doc.get("service_tier"),
        raw_message=message,
    )
