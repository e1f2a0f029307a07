"""One engine replica: an `AsyncEngine` in a process of its own, driven by the front.

The class is plain Python; the front makes it a Ray actor (`ray.remote`) so this module
imports without Ray. `stream` is a streaming generator: it yields `OutputBatch`es, each
holding every delta made since the last, so a request costs one call however many tokens
it makes, and a slow link batches more instead of falling behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from tokenfactory.engine.async_engine import AsyncEngine
from tokenfactory.engine.config import EngineConfig
from tokenfactory.engine.engine import Engine
from tokenfactory.engine.errors import EngineClosedError, EngineStepError, InvalidRequestError
from tokenfactory.engine.outputs import RequestOutput
from tokenfactory.engine.sampling_params import SamplingParams
from tokenfactory.fleet.messages import (
    EngineDescription,
    OutputBatch,
    ReplicaError,
    ReplicaStats,
    this_process,
)
from tokenfactory.scheduling.step_model import StepCoefficients, StepTimeModel
from tokenfactory.tiers import ServiceTerms

T = TypeVar("T")


@dataclass(frozen=True)
class ReplicaSpec:
    """How to build a replica's engine: the same model and engine options as `serve`."""

    model: str | None
    engine: EngineConfig
    max_step_failures: int


class EngineReplica:
    def __init__(self, spec: ReplicaSpec):
        self.started_at = time.time()
        self.requests_served = 0
        self.async_engine = AsyncEngine(
            lambda: Engine.from_model_path(spec.model, spec.engine),
            max_consecutive_failures=spec.max_step_failures,
        )
        self.engine = self.async_engine.engine

    async def stream(
        self,
        prompt: list[int],
        params: SamplingParams | None,
        request_id: str,
        terms: ServiceTerms | None,
    ) -> AsyncGenerator[OutputBatch, None]:
        """Queue a request and stream its deltas in batches; the first batch is empty (it was
        accepted) or carries the error that refused it. Closing the stream aborts it."""
        try:
            rid = await self.async_engine.add_request(prompt, params, request_id, terms)
        except (InvalidRequestError, EngineClosedError) as exc:
            yield OutputBatch([], time.monotonic(), ReplicaError.of(exc, queuing=True))
            return
        self.requests_served += 1
        yield OutputBatch([], time.monotonic())
        pending: list[RequestOutput] = []
        ready = asyncio.Event()

        async def pump() -> None:
            try:
                async for out in self.async_engine.outputs(rid):
                    pending.append(out)
                    ready.set()
            finally:
                ready.set()

        task = asyncio.ensure_future(pump())
        try:
            while not (task.done() and not pending):
                await ready.wait()
                ready.clear()
                if pending:
                    batch = list(pending)
                    pending.clear()
                    yield OutputBatch(batch, time.monotonic())
            try:
                task.result()
            except (EngineStepError, EngineClosedError) as exc:
                yield OutputBatch([], time.monotonic(), ReplicaError.of(exc))
        finally:
            if not task.done():
                task.cancel()  # leaving the engine's stream early aborts the request there
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    def abort(self, request_id: str) -> None:
        self.async_engine.abort(request_id)

    def describe(self) -> EngineDescription:
        e = self.engine
        return EngineDescription(
            model_name=e.model_name,
            model_config=e.model_config,
            tokenizer=e.tokenizer,
            max_model_len=e.max_model_len,
            device=str(e.device),
            policy=e.scheduler.policy.name,
            proposer=e.proposer.name if e.proposer is not None else None,
        )

    def stats(self) -> ReplicaStats:
        e = self.engine
        health = self.async_engine.health
        running = e.scheduler.num_running
        model = StepTimeModel.from_steps(e.stats.recent(256), prior=e.step_prior)
        pid, node = this_process()
        return ReplicaStats(
            pid=pid,
            node=node,
            started_at=self.started_at,
            healthy=not health.is_dead and self.async_engine.is_running,
            health_reason=health.reason,
            failed_steps=health.failed_steps,
            waiting=e.scheduler.num_waiting,
            running=running,
            kv_usage=e.block_manager.usage,
            has_step_prior=e.step_prior is not None,
            predicted_step_s=model.predict(max(1, running)),
            acceptance=e.scheduler.acceptance.rate,
            requests_served=self.requests_served,
        )

    def recent_steps(self, n: int) -> list[Any]:
        return self.engine.stats.recent(n)

    async def call(self, fn: Callable[[Engine], T]) -> T:
        """Run `fn(engine)` on the engine's thread (a capacity probe); the actor's event loop
        keeps serving meanwhile."""
        return await asyncio.to_thread(self.async_engine.call, fn)

    async def set_step_prior(self, prior: StepCoefficients) -> None:
        await asyncio.to_thread(self.async_engine.call, lambda e: e.set_step_prior(prior))

    def shutdown(self) -> None:
        self.async_engine.shutdown()
