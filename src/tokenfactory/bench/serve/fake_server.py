"""A fast fake OpenAI-compatible streaming endpoint, for testing and calibrating the generator.

Raw asyncio HTTP/1.1 (keep-alive, chunked SSE): it streams `max_tokens` one-word tokens per
request at a known pace (`tokens_per_s`, 0 = as fast as it can) after a known delay (`ttft_s`),
per tier if asked; its tokenizer is one word = one token; cached tokens are the words a prompt
shares with the previous prompt of the same `prompt_cache_key`. `errors` is a cycle of
behaviours by request number: ok, 400, 401, 500, 429, midstream, drop. Like a factory's
ledger, `GET /v1/usage?by=task` sums what it billed each X-Task-Id (at the cpu tier prices).

    python -m tokenfactory.bench.serve.fake_server --port 8001           # as fast as it can
    python -m tokenfactory.bench.serve.fake_server --port 8001 --tokens-per-s 20 --ttft 0.5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import threading
import time
from dataclasses import asdict, dataclass, field

from tokenfactory.tiers import load_tiers

_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    429: "Too Many Requests",
    500: "Internal Server Error",
}


@dataclass
class FakeConfig:
    tokens_per_s: float = 0.0  # 0: no pacing
    ttft_s: float = 0.0
    tier_pace: dict[str, tuple[float, float]] = field(default_factory=dict)  # tier: (tps, ttft)
    errors: list[str] = field(default_factory=list)  # cycled per request; empty: all ok
    publish_tiers: bool = True
    report_usage: bool = True
    api_key: str | None = None  # when set, requests must carry it
    model: str = "fake-model"
    delivered_tier: str | None = None  # None: echo the requested tier (default "standard")
    # The last token has no text and ends the completion, as an end-of-sequence token does.
    last_token_without_text: bool = False


@dataclass
class FakeStats:
    requests: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    arrivals: list[float] = field(default_factory=list)  # time.perf_counter() at arrival
    bodies: list[dict] = field(default_factory=list)
    auth: list[str | None] = field(default_factory=list)
    task_ids: list[str | None] = field(default_factory=list)  # X-Task-Id per request


def _error_body(message: str, type_: str, code: str | None = None) -> bytes:
    err = {"message": message, "type": type_, "param": None, "code": code}
    return json.dumps({"error": err}).encode()


class FakeServer:
    def __init__(self, config: FakeConfig | None = None, keep_bodies: bool = False) -> None:
        self.config = config or FakeConfig()
        self.stats = FakeStats()
        self.keep_bodies = keep_bodies
        self._prev_prompt: dict[str, list[str]] = {}
        self._billed: dict[tuple[str | None, str], int] = {}  # (authorization, task): micro-USD
        self._prices = load_tiers(preset="cpu")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    # -- lifecycle --------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        self._server = await asyncio.start_server(self._handle, host, port, backlog=1024)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    def start_in_thread(self) -> str:
        """Serve on a free loopback port from a daemon thread; returns the base URL."""
        ready = threading.Event()

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            self._loop.run_until_complete(self.start())
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        ready.wait(10)
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self._loop and self._server:
            self._loop.call_soon_threadsafe(self._server.close)
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread:
            self._thread.join(5)

    # -- HTTP -------------------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        k, v = line.split(":", 1)
                        headers[k.strip().lower()] = v.strip()
                n = int(headers.get("content-length", "0"))
                body = await reader.readexactly(n) if n else b""
                keep = await self._route(method, path, headers, body, writer)
                if not keep:
                    break
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        finally:
            writer.close()

    def _send(
        self,
        writer: asyncio.StreamWriter,
        status: int,
        body: bytes,
        extra: dict[str, str] | None = None,
    ) -> None:
        hdr = [
            f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}",
            "Content-Type: application/json",
            f"Content-Length: {len(body)}",
        ]
        hdr += [f"{k}: {v}" for k, v in (extra or {}).items()]
        writer.write(("\r\n".join(hdr) + "\r\n\r\n").encode() + body)

    async def _route(self, method, path, headers, body, writer) -> bool:
        cfg = self.config
        if method == "GET" and path == "/v1/models":
            doc = {"object": "list", "data": [{"id": cfg.model, "object": "model"}]}
            self._send(writer, 200, json.dumps(doc).encode())
        elif method == "GET" and path == "/v1/tiers" and cfg.publish_tiers:
            cat = load_tiers(preset="cpu")
            data = [t.as_dict() | {"available": True, "reason": None} for t in cat.tiers]
            doc = {
                "object": "list",
                "preset": "cpu",
                "default_tier": cat.default_tier,
                "data": data,
            }
            self._send(writer, 200, json.dumps(doc).encode())
        elif method == "GET" and path.partition("?")[0] == "/v1/usage" and "by=task" in path:
            auth = headers.get("authorization")
            data = [
                {"task_id": task, "amount_micro_usd": amount}
                for (who, task), amount in self._billed.items()
                if who == auth
            ]
            self._send(writer, 200, json.dumps({"object": "list", "data": data}).encode())
        elif method == "GET" and path == "/fake/stats":
            self._send(writer, 200, json.dumps(asdict(self.stats)).encode())
        elif method == "POST" and path == "/fake/reset":
            self.stats = FakeStats()
            self._prev_prompt.clear()
            self._billed.clear()
            self._send(writer, 200, b"{}")
        elif method == "POST" and path in ("/v1/chat/completions", "/v1/completions"):
            await self._complete(path.endswith("chat/completions"), headers, body, writer)
            return True
        else:
            self._send(writer, 404, _error_body(f"no route {path}", "not_found_error"))
        await writer.drain()
        return True

    # -- completions ------------------------------------------------------------------

    def _prompt_words(self, req: dict, chat: bool) -> list[str]:
        if chat:
            return " ".join(str(m.get("content", "")) for m in req.get("messages", [])).split()
        return str(req.get("prompt", "")).split()

    async def _complete(self, chat: bool, headers: dict, raw: bytes, writer) -> None:
        cfg, st = self.config, self.stats
        index = st.requests
        st.requests += 1
        st.arrivals.append(time.perf_counter())
        arrived = time.monotonic()
        req = json.loads(raw or b"{}")
        task_id = headers.get("x-task-id")
        if self.keep_bodies:
            st.bodies.append(req)
            st.auth.append(headers.get("authorization"))
            st.task_ids.append(task_id)
        behaviour = cfg.errors[index % len(cfg.errors)] if cfg.errors else "ok"
        if cfg.api_key and headers.get("authorization") != f"Bearer {cfg.api_key}":
            behaviour = "401"
        if behaviour in ("400", "401", "500", "429"):
            kinds = {
                "400": ("invalid_request_error", None),
                "401": ("authentication_error", None),
                "500": ("server_error", None),
                "429": ("rate_limit_exceeded", "429"),
            }
            type_, _ = kinds[behaviour]
            extra = {"Retry-After": "1"} if behaviour == "429" else None
            self._send(writer, int(behaviour), _error_body("injected", type_), extra)
            await writer.drain()
            return
        tier = req.get("service_tier") or "standard"
        delivered = cfg.delivered_tier or tier
        tps, ttft = cfg.tier_pace.get(tier, (cfg.tokens_per_s, cfg.ttft_s))
        n = int(req.get("max_tokens") or 16)
        words = self._prompt_words(req, chat)
        key = str(req.get("prompt_cache_key") or "")
        prev = self._prev_prompt.get(key, [])
        common = 0
        for a, b in zip(prev, words, strict=False):
            if a != b:
                break
            common += 1
        self._prev_prompt[key] = words
        cached = common // 16 * 16
        if task_id is not None:
            prices = self._prices
            price = prices[delivered] if delivered in prices else prices[prices.default_tier]
            bill = (headers.get("authorization"), task_id)
            self._billed[bill] = self._billed.get(bill, 0) + price.cost_micro_usd(
                len(words), cached, n
            )
        st.in_flight += 1
        st.max_in_flight = max(st.max_in_flight, st.in_flight)
        try:
            await self._stream(
                writer, chat, n, tps, ttft, arrived, behaviour, tier, delivered, len(words), cached
            )
        finally:
            st.in_flight -= 1

    async def _stream(
        self, writer, chat, n, tps, ttft, arrived, behaviour, tier, delivered, prompt_tokens, cached
    ) -> None:
        model = self.config.model
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n"
        )

        def frame(doc: dict | str) -> bytes:
            data = doc if isinstance(doc, str) else json.dumps(doc, separators=(",", ":"))
            payload = f"data: {data}\n\n".encode()
            return f"{len(payload):x}\r\n".encode() + payload + b"\r\n"

        obj = "chat.completion.chunk" if chat else "text_completion"
        base = {
            "id": "cmpl-fake",
            "object": obj,
            "created": int(time.time()),
            "model": model,
            "service_tier": tier,
        }

        def choice(text: str, finish: str | None = None) -> dict:
            if chat:
                return {"index": 0, "delta": {"content": text}, "finish_reason": finish}
            return {"index": 0, "text": text, "finish_reason": finish}

        token = frame(base | {"choices": [choice(" word")]})
        if chat:
            writer.write(
                frame(
                    base
                    | {
                        "choices": [
                            {
                                "index": 0,
                                "delta": {"role": "assistant", "content": ""},
                                "finish_reason": None,
                            }
                        ]
                    }
                )
            )
        await writer.drain()
        for k in range(n):
            if ttft > 0 or tps > 0:
                due = arrived + ttft + (k / tps if tps > 0 else 0.0)
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
            if k == 3 and behaviour == "midstream":
                writer.write(
                    frame(
                        {
                            "error": {
                                "message": "injected failure mid-stream",
                                "type": "server_error",
                                "param": None,
                                "code": None,
                            }
                        }
                    )
                )
                writer.write(frame("[DONE]") + b"0\r\n\r\n")
                await writer.drain()
                return
            if k == 3 and behaviour == "drop":
                await writer.drain()
                writer.transport.abort()
                raise ConnectionError("dropped on purpose")
            if k == n - 1 and self.config.last_token_without_text:
                writer.write(frame(base | {"choices": [choice("", "stop")]}))
            elif k == n - 1:
                writer.write(frame(base | {"choices": [choice(" end", "length")]}))
            else:
                writer.write(token)
            await writer.drain()
            if tps <= 0 and ttft <= 0 and k % 8 == 7:
                await asyncio.sleep(0)  # let other streams interleave
        if self.config.report_usage:
            usage = {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": n,
                "total_tokens": prompt_tokens + n,
                "prompt_tokens_details": {"cached_tokens": cached},
            }
            writer.write(frame(base | {"choices": [], "usage": usage, "service_tier": delivered}))
        writer.write(frame("[DONE]") + b"0\r\n\r\n")
        await writer.drain()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Fake OpenAI-compatible streaming endpoint.")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8001)
    ap.add_argument("--tokens-per-s", type=float, default=0.0, help="0: as fast as it can")
    ap.add_argument("--ttft", type=float, default=0.0, help="seconds before the first token")
    ap.add_argument("--errors", default="", help="cycle, e.g. ok,ok,429,midstream")
    ap.add_argument("--config-json", help="a FakeConfig as JSON (overrides the flags)")
    ap.add_argument("--keep-bodies", action="store_true", help="record requests for /fake/stats")
    a = ap.parse_args(argv)
    if a.config_json:
        cfg = json.loads(a.config_json)
        cfg["tier_pace"] = {k: tuple(v) for k, v in cfg.get("tier_pace", {}).items()}
        config = FakeConfig(**cfg)
    else:
        config = FakeConfig(a.tokens_per_s, a.ttft, errors=[e for e in a.errors.split(",") if e])
    server = FakeServer(config, keep_bodies=a.keep_bodies)

    async def serve() -> None:
        port = await server.start(a.host, a.port)
        print(f"fake endpoint on http://{a.host}:{port}", flush=True)
        await asyncio.Event().wait()

    try:
        try:
            import uvloop
        except ImportError:
            asyncio.run(serve())
        else:
            uvloop.run(serve())
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
