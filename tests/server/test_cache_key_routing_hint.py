"""A request's `prompt_cache_key` reaches the engine's `add_request` as the routing hint, from
chat completions, completions and Responses; Messages has no cache key and sends none. In
process, no model: a serving engine that records what it was given and answers one token."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

from tests.server.fakes import FakeTokenizer, factory_parts
from tokenfactory.engine.health import EngineHealth
from tokenfactory.engine.outputs import RequestOutput
from tokenfactory.engine.sampling_params import SamplingParams
from tokenfactory.server.app import create_app
from tokenfactory.server.factory import Factory, FactoryConfig
from tokenfactory.tiers import ServiceTerms

pytestmark = pytest.mark.integration  # a real ASGI app in process

MODEL = "fake"


class RecordingEngine:
    """A `ServingEngine` that keeps each request's routing hint and answers one token."""

    def __init__(self) -> None:
        self.hints: list[str | None] = []
        self._prompts: dict[str, int] = {}

    @property
    def health(self) -> EngineHealth:
        return EngineHealth()

    @property
    def is_running(self) -> bool:
        return True

    async def add_request(
        self,
        prompt: str | list[int],
        params: SamplingParams | None = None,
        request_id: str | None = None,
        terms: ServiceTerms | None = None,
        cache_key: str | None = None,
    ) -> str:
        assert request_id is not None
        self.hints.append(cache_key)
        self._prompts[request_id] = len(prompt)
        return request_id

    async def outputs(self, request_id: str) -> AsyncGenerator[RequestOutput, None]:
        now = asyncio.get_running_loop().time()
        yield RequestOutput(
            request_id=request_id,
            token_ids=[42],
            text="x",
            logprobs=None,
            finished=True,
            finish_reason="length",
            stop_reason=None,
            prompt_tokens=self._prompts.pop(request_id),
            cached_tokens=0,
            completion_tokens=1,
            arrival_time=now,
            first_token_time=now,
            finished_time=now,
            first_scheduled_time=now,
        )

    def abort(self, request_id: str) -> None:
        self._prompts.pop(request_id, None)

    def shutdown(self, timeout: float = 10.0) -> None:
        pass


def _view() -> SimpleNamespace:
    return SimpleNamespace(
        model_name=MODEL,
        tokenizer=FakeTokenizer(),
        max_model_len=4096,
        model_config=SimpleNamespace(vocab_size=512, architecture="llama"),
        scheduler=SimpleNamespace(num_waiting=0, num_running=0),
        block_manager=SimpleNamespace(usage=0.0),
    )


def _factory(data_dir: Path) -> tuple[Factory, RecordingEngine, dict[str, str]]:
    parts = factory_parts(data_dir, MODEL)
    engine = RecordingEngine()
    config = FactoryConfig(MODEL, data_dir)
    factory = Factory(_view(), parts.catalog, parts.billing, parts.capacity, config, engine)  # type: ignore[arg-type]
    return factory, engine, parts.keys


def _requests(key: str) -> list[tuple[str, dict]]:
    chat = [{"role": "user", "content": "hello"}]
    return [
        ("/v1/chat/completions", {"messages": chat, "max_tokens": 1, "prompt_cache_key": "c1"}),
        ("/v1/chat/completions", {"messages": chat, "max_tokens": 1}),
        ("/v1/completions", {"prompt": "hello", "max_tokens": 1, "prompt_cache_key": "t1"}),
        ("/v1/responses", {"input": "hello", "max_output_tokens": 16, "prompt_cache_key": "r1"}),
        (
            "/v1/messages",
            {"messages": chat, "max_tokens": 1, "metadata": {"user_id": "u1"}},
        ),
    ]


def test_prompt_cache_key_reaches_the_engine_as_its_routing_hint(tmp_path):
    factory, engine, keys = _factory(tmp_path)
    app = create_app(factory)

    async def main() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t", timeout=30) as c:
            for path, body in _requests(keys["standard"]):
                headers = {"Authorization": f"Bearer {keys['standard']}"}
                if path == "/v1/messages":
                    headers["anthropic-version"] = "2023-06-01"
                r = await c.post(path, json={"model": MODEL, **body}, headers=headers)
                assert r.status_code == 200, (path, r.text)

    try:
        asyncio.run(main())
    finally:
        factory.billing.close()
    # Messages' metadata.user_id names a user, not a shared prompt: no hint.
    assert engine.hints == ["c1", None, "t1", "r1", None]
