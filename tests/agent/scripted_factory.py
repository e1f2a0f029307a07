"""An OpenAI-compatible factory that replays scripted chat-completions responses in process
(httpx MockTransport) and records every request it receives."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

# $1 / $0.10 / $2 per million tokens at standard, ten times that at super: easy sums.
TIERS_BODY = {
    "object": "list",
    "default_tier": "standard",
    "data": [
        {"name": "standard", "rank": 1, "tokens_per_s": 4, "ttft_s": 6,
         "price_micro_usd_per_mtok": {"input": 1_000_000, "cached_input": 100_000,
                                      "output": 2_000_000}},
        {"name": "super", "rank": 4, "tokens_per_s": 25, "ttft_s": 1,
         "price_micro_usd_per_mtok": {"input": 10_000_000, "cached_input": 1_000_000,
                                      "output": 20_000_000}},
    ],
}


def _price(reply_body: dict) -> int:
    """The factory's price of one reply (per-million prices, rounded up per request)."""
    tier = next(t for t in TIERS_BODY["data"] if t["name"] == reply_body["service_tier"])
    p = tier["price_micro_usd_per_mtok"]
    u = reply_body["usage"]
    cached = u["prompt_tokens_details"]["cached_tokens"]
    total = ((u["prompt_tokens"] - cached) * p["input"] + cached * p["cached_input"]
             + u["completion_tokens"] * p["output"])
    return -(-total // 1_000_000)


def call(name: str, call_id: str = "", **arguments) -> dict:
    return {"id": call_id or f"call_{name}", "type": "function",
            "function": {"name": name, "arguments": json.dumps(arguments)}}


def reply(
    *calls: dict,
    text: str = "",
    prompt: int = 100,
    cached: int = 0,
    completion: int = 10,
    tier: str = "standard",
    finish_reason: str | None = None,
) -> dict:
    return {
        "id": "chatcmpl-x",
        "object": "chat.completion",
        "model": "scripted",
        "service_tier": tier,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": text or None,
                        **({"tool_calls": list(calls)} if calls else {})},
            "finish_reason": finish_reason or ("tool_calls" if calls else "stop"),
        }],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                  "total_tokens": prompt + completion,
                  "prompt_tokens_details": {"cached_tokens": cached}},
    }


def error(
    status: int, message: str, param: str | None = None, retry_after: str | None = None
) -> tuple[int, dict, dict]:
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    return status, {"error": {"message": message, "type": "invalid_request_error",
                              "param": param, "code": None}}, headers


@dataclass
class ScriptedFactory:
    script: list  # reply dicts or (status, body) errors, served in order; the last repeats
    publish_tiers: bool = True
    on_chat: Callable[[], None] = lambda: None  # e.g. advance a fake clock
    publish_usage: bool = True  # GET /v1/usage?by=task from what it served
    extra_billed: int = 0  # micro-dollars billed per task beyond the replies (abandoned work)
    requests: list[httpx.Request] = field(default_factory=list)
    billed: dict[str, list[dict]] = field(default_factory=dict)  # task id -> replies served

    @property
    def chat_bodies(self) -> list[dict]:
        chats = [r for r in self.requests if r.url.path.endswith("/chat/completions")]
        return [json.loads(r.content) for r in chats]

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path = request.url.path
        if path == "/v1/tiers":
            if not self.publish_tiers:
                return httpx.Response(404, json={"detail": "Not Found"})
            return httpx.Response(200, json=TIERS_BODY)
        if path == "/v1/usage" and request.url.params.get("by") == "task":
            if not self.publish_usage:
                return httpx.Response(404, json={"detail": "Not Found"})
            return httpx.Response(200, json={"object": "list", "data": self._usage_rows()})
        if path == "/v1/models":
            return httpx.Response(200, json={"object": "list", "data": [{"id": "scripted"}]})
        if path == "/v1/chat/completions":
            self.on_chat()
            n = len(self.chat_bodies) - 1
            item = self.script[min(n, len(self.script) - 1)]
            if isinstance(item, tuple):
                return httpx.Response(item[0], json=item[1], headers=item[2])
            self.billed.setdefault(request.headers.get("X-Task-Id", ""), []).append(item)
            return httpx.Response(200, json=item)
        return httpx.Response(404, json={"detail": "Not Found"})

    def _usage_rows(self) -> list[dict]:
        rows = [{"task_id": "someone-else", "requests": 9, "prompt_tokens": 9,
                 "cached_tokens": 0, "completion_tokens": 9, "amount_micro_usd": 999}]
        for task_id, replies in self.billed.items():
            u = [r["usage"] for r in replies]
            prompt = sum(x["prompt_tokens"] for x in u)
            cached = sum(x["prompt_tokens_details"]["cached_tokens"] for x in u)
            completion = sum(x["completion_tokens"] for x in u)
            amount = sum(_price(r) for r in replies) + self.extra_billed
            rows.append({"task_id": task_id, "requests": len(replies), "prompt_tokens": prompt,
                         "cached_tokens": cached, "completion_tokens": completion,
                         "amount_micro_usd": amount})
        return rows

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)


@contextmanager
def serving(factory: ScriptedFactory) -> Iterator[str]:
    """The scripted factory on a real loopback port (for the CLI); yields its base URL."""

    class Handler(BaseHTTPRequestHandler):
        def _relay(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            request = httpx.Request(
                self.command, f"http://{self.headers['Host']}{self.path}",
                headers=dict(self.headers.items()), content=self.rfile.read(length),
            )
            response = factory.handle(request)
            self.send_response(response.status_code)
            for name in ("Retry-After",):
                if name in response.headers:
                    self.send_header(name, response.headers[name])
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(response.content)))
            self.end_headers()
            self.wfile.write(response.content)

        do_GET = do_POST = _relay

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
