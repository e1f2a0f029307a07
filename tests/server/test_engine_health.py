"""A dead engine over HTTP: /ready says so, new requests get 503 at once and are not billed,
requests that were running are settled for what they received. In process, no model: a fake
engine whose steps fail when the test says so."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

from tests.server.conftest import ledger_rows, open_reservations
from tests.server.fakes import FakeTokenizer, factory_parts
from tokenfactory.engine.async_engine import AsyncEngine
from tokenfactory.engine.outputs import RequestOutput
from tokenfactory.server.app import create_app
from tokenfactory.server.factory import Factory, FactoryConfig

pytestmark = pytest.mark.integration  # a real HTTP server in process, on the wall clock

MODEL = "fake"
TOKENS_BEFORE_HOLD = 3  # each running request gets this many tokens, then waits for the test
STALLED = 7  # requests with this max_tokens never get a token (still queued)


@dataclass
class _Req:
    params: object
    prompt_tokens: int
    produced: int = 0


class FakeEngine:
    """Just enough of `Engine` for AsyncEngine and the factory: one token per request a
    step, up to TOKENS_BEFORE_HOLD; steps raise while `failing` is set."""

    def __init__(self) -> None:
        self.tokenizer = FakeTokenizer()
        self.max_model_len = 4096
        self.model_config = SimpleNamespace(vocab_size=512)
        self.scheduler = SimpleNamespace(num_waiting=0, num_running=0)
        self.block_manager = SimpleNamespace(usage=0.0)
        self.requests: dict[str, _Req] = {}
        self.failing = threading.Event()
        self.hold = True  # stop at TOKENS_BEFORE_HOLD tokens

    def add_request(self, prompt, params=None, request_id=None, *_terms) -> str:
        self.requests[request_id] = _Req(params, len(prompt))
        return request_id

    def abort(self, request_id: str) -> bool:
        return self.requests.pop(request_id, None) is not None

    def unfinished_request_ids(self) -> list[str]:
        return list(self.requests)

    def has_unfinished(self) -> bool:
        return bool(self.requests)

    def ready(self, n: int) -> bool:
        """n requests in, and every one that runs has had its tokens."""
        reqs = list(self.requests.values())
        return len(reqs) == n and all(
            r.produced >= TOKENS_BEFORE_HOLD for r in reqs if r.params.max_tokens != STALLED
        )

    def step(self) -> list[RequestOutput]:
        time.sleep(0.002)
        if self.failing.is_set():
            raise RuntimeError("device lost")
        outs = []
        now = time.monotonic()
        for rid, r in list(self.requests.items()):
            limit = r.params.max_tokens
            if limit == STALLED or (self.hold and r.produced >= TOKENS_BEFORE_HOLD):
                continue
            r.produced += 1
            done = r.produced >= limit
            if done:
                del self.requests[rid]
            outs.append(
                RequestOutput(
                    request_id=rid,
                    token_ids=[42],
                    text="x",
                    logprobs=None,
                    finished=done,
                    finish_reason="length" if done else None,
                    stop_reason=None,
                    prompt_tokens=r.prompt_tokens,
                    cached_tokens=0,
                    completion_tokens=r.produced,
                    arrival_time=now,
                    first_token_time=now,
                    finished_time=now if done else None,
                    first_scheduled_time=now,
                )
            )
        return outs


def _factory(data_dir: Path, max_failures: int) -> tuple[Factory, FakeEngine, dict[str, str]]:
    parts = factory_parts(data_dir, MODEL)
    fake = FakeEngine()
    aengine = AsyncEngine(lambda: fake, idle_wait_s=0.01, max_consecutive_failures=max_failures)
    config = FactoryConfig(MODEL, data_dir)
    factory = Factory(fake, parts.catalog, parts.billing, parts.capacity, config, aengine)  # type: ignore[arg-type]
    return factory, fake, parts.keys


def _chat(key: str, stream: bool = False, max_tokens: int = 50, tier: str | None = None) -> dict:
    body: dict = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "hello"}],
        "max_tokens": max_tokens,
        "stream": stream,
    }
    if tier is not None:
        body["service_tier"] = tier
    return {"json": body, "headers": {"Authorization": f"Bearer {key}"}}


async def _until(cond, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, "timed out waiting for the engine"
        await asyncio.sleep(0.005)


def _error(r: httpx.Response, status: int, code: str) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["code"] == code and err["type"] == "server_error"
    assert "Traceback" not in r.text
    return body


def _events(sse: str) -> list[dict]:
    return [
        json.loads(line[len("data: ") :]) for line in sse.splitlines() if line.startswith("data: {")
    ]


def test_a_dead_engine_fails_requests_clearly_and_bills_only_what_was_delivered(tmp_path):
    factory, fake, keys = _factory(tmp_path, max_failures=1)
    app = create_app(factory)

    async def main():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t", timeout=30) as c:
            assert (await c.get("/ready")).status_code == 200
            streamed = asyncio.ensure_future(
                c.post("/v1/chat/completions", **_chat(keys["super"], stream=True))
            )
            whole = asyncio.ensure_future(c.post("/v1/chat/completions", **_chat(keys["super"])))
            queued = asyncio.ensure_future(  # free is sheddable: it waits for a first token
                c.post("/v1/chat/completions", **_chat(keys["free"], max_tokens=STALLED))
            )
            await _until(lambda: fake.ready(3))
            fake.failing.set()
            ran = await asyncio.gather(streamed, whole, queued)
            # Then: no engine, and everyone is told so at once, before anything is reserved.
            before = set(ledger_rows(tmp_path))
            started = time.monotonic()
            new_chat = await c.post("/v1/chat/completions", **_chat(keys["super"]))
            new_text = await c.post(
                "/v1/completions",
                json={"model": MODEL, "prompt": "hi", "max_tokens": 5},
                headers={"Authorization": f"Bearer {keys['standard']}"},
            )
            refused_in = time.monotonic() - started
            assert set(ledger_rows(tmp_path)) == before
            ready = await c.get("/ready")
            health = await c.get("/health")
            metrics = (await c.get("/metrics")).text
            return ran, new_chat, new_text, refused_in, ready, health, metrics

    try:
        ran, new_chat, new_text, refused_in, ready, health, metrics = asyncio.run(main())
    finally:
        asyncio.run(factory.shutdown())
    streamed, whole, queued = ran

    # The stream had its tokens, then an error event the SDK raises.
    assert streamed.status_code == 200
    events = _events(streamed.text)
    chunks = [e for e in events if "choices" in e and e["choices"][0]["delta"].get("content")]
    assert len(chunks) == TOKENS_BEFORE_HOLD
    assert events[-1]["error"]["code"] == "engine_unavailable"
    assert "billed only for the tokens you received" in events[-1]["error"]["message"]
    assert "[DONE]" not in streamed.text and "Traceback" not in streamed.text
    _error(whole, 503, "engine_unavailable")
    _error(queued, 503, "engine_unavailable")

    # What clients see once it is dead.
    err = _error(new_chat, 503, "engine_unavailable")["error"]
    assert "an engine step failed" in err["message"] and "restarted" in err["message"]
    assert "device lost" not in err["message"]  # internals go to /ready and the log only
    _error(new_text, 503, "engine_unavailable")
    assert refused_in < 2.0
    body = _error(ready, 503, "engine_unavailable")
    assert body["status"] == "dead" and body["dead_since"]
    assert "RuntimeError: device lost" in body["error"]["message"]
    assert body["error"]["message"].endswith("Restart the server.")
    assert health.status_code == 200  # liveness: the process still answers
    assert "tokenfactory_engine_healthy 0.0" in metrics
    assert "tokenfactory_engine_failed_steps_total 1.0" in metrics
    assert 'outcome="engine_unavailable"' in metrics

    # Every request that ran is settled: the stream for what it received, the rest for nothing.
    rows = ledger_rows(tmp_path)
    assert len(rows) == 3 and open_reservations(tmp_path) == 0
    stream_row = rows[events[0]["id"]]
    assert stream_row["completion_tokens"] == TOKENS_BEFORE_HOLD
    assert stream_row["prompt_tokens"] == len("hello") and stream_row["amount_micro_usd"] > 0
    others = [r for rid, r in rows.items() if rid != events[0]["id"]]
    assert all(r["completion_tokens"] == 0 and r["amount_micro_usd"] == 0 for r in others)
    assert all(r["finish_reason"] == "error" for r in rows.values())
    assert all("the engine is dead" in r["error"] for r in rows.values())


def test_one_failed_step_is_a_500_for_its_requests_and_the_server_keeps_serving(tmp_path):
    factory, fake, keys = _factory(tmp_path, max_failures=3)
    app = create_app(factory)

    async def main():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t", timeout=30) as c:
            failed = asyncio.ensure_future(c.post("/v1/chat/completions", **_chat(keys["super"])))
            await _until(lambda: fake.ready(1))
            fake.failing.set()
            failed = await failed
            fake.failing.clear()
            fake.hold = False
            ok = await c.post("/v1/chat/completions", **_chat(keys["super"], max_tokens=4))
            return failed, ok, await c.get("/ready"), (await c.get("/metrics")).text

    try:
        failed, ok, ready, metrics = asyncio.run(main())
    finally:
        asyncio.run(factory.shutdown())
    err = _error(failed, 500, "engine_error")["error"]
    assert "Nothing was billed" in err["message"]
    assert ok.status_code == 200, ok.text
    assert ok.json()["usage"]["completion_tokens"] == 4
    assert ready.status_code == 200
    assert "tokenfactory_engine_healthy 1.0" in metrics
    assert "tokenfactory_engine_failed_steps_total 1.0" in metrics
    rows = ledger_rows(tmp_path)
    failed_row = next(r for r in rows.values() if r["finish_reason"] == "error")
    assert failed_row["amount_micro_usd"] == 0 and "an engine step failed" in failed_row["error"]
    assert open_reservations(tmp_path) == 0


def test_settling_writes_the_ledger_row_off_the_event_loop(tmp_path):
    factory, fake, keys = _factory(tmp_path, max_failures=3)
    fake.hold = False
    app = create_app(factory)
    real_settle = factory.billing.settle
    writers: list[str] = []
    writing, release = threading.Event(), threading.Event()
    released: list[bool] = []

    def slow_settle(*args, **kwargs):
        # A slow database: the write waits until the test has been answered meanwhile. Were it
        # on the event loop, nothing could answer, and the wait would run out instead.
        writers.append(threading.current_thread().name)
        writing.set()
        released.append(release.wait(5))
        return real_settle(*args, **kwargs)

    factory.billing.settle = slow_settle  # type: ignore[method-assign]

    async def main():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t", timeout=30) as c:
            done = asyncio.ensure_future(
                c.post("/v1/chat/completions", **_chat(keys["super"], max_tokens=3))
            )
            await _until(writing.is_set)
            health = await c.get("/health")  # answered while the row is being written
            release.set()
            return health, await done

    try:
        health, reply = asyncio.run(main())
        rows_at_reply = ledger_rows(tmp_path)
    finally:
        release.set()
        asyncio.run(factory.shutdown())
    assert health.status_code == 200 and released == [True]
    assert writers and all(name.startswith("ledger-settle") for name in writers)
    assert reply.status_code == 200, reply.text
    assert reply.json()["id"] in rows_at_reply  # the answer went out once its row was written
