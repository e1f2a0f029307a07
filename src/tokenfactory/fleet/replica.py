"""One engine replica: an `AsyncEngine` in a process of its own, driven by the front.

The class is plain Python; the front makes it a Ray actor (`ray.remote`) so this module
imports without Ray. A front queues requests with `submit` and reads every request's deltas
through one `subscribe` stream per replica: each read carries all that was made since the
last, so a step costs one streamed object however many requests it served, and a slow link
batches more instead of falling behind.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from tokenfactory.engine.async_engine import AsyncEngine
from tokenfactory.engine.config import EngineConfig
from tokenfactory.engine.engine import Engine
from tokenfactory.engine.errors import EngineClosedError, InvalidRequestError
from tokenfactory.engine.sampling_params import SamplingParams
from tokenfactory.fleet.messages import (
    ChannelBatch,
    EngineDescription,
    ReplicaError,
    ReplicaStats,
    this_process,
)
from tokenfactory.fleet.outbox import Outbox
from tokenfactory.scheduling.step_model import StepCoefficients, StepTimeModel
from tokenfactory.tiers import ServiceTerms

T = TypeVar("T")
_REFIT_S = 1.0


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
        self._outboxes: dict[str, Outbox] = {}  # by the front's channel
        self._readers: dict[str, object] = {}  # the read now open on each channel
        self._fitted: tuple[float, StepTimeModel] | None = None  # (when, model)

    async def submit(
        self,
        channel: str,
        prompt: list[int],
        params: SamplingParams | None,
        request_id: str,
        terms: ServiceTerms | None,
    ) -> ReplicaError | None:
        """Queue a request whose deltas go to `channel`'s outbox; None when accepted, else the
        error that refused it."""
        try:
            rid = await self.async_engine.add_request(prompt, params, request_id, terms)
        except (InvalidRequestError, EngineClosedError) as exc:
            return ReplicaError.of(exc, queuing=True)
        self.requests_served += 1
        self._outbox(channel).follow(rid, self.async_engine.outputs(rid))
        return None

    async def subscribe(self, channel: str) -> AsyncGenerator[ChannelBatch, None]:
        """A streaming generator: `channel`'s outputs, one batch per read, for as long as the
        front reads. When the front stops reading, its requests are aborted."""
        box = self._outbox(channel)
        reader: object = asyncio.current_task() or object()
        previous = self._readers.get(channel)
        self._readers[channel] = reader
        if isinstance(previous, asyncio.Task) and not previous.done():
            # The front opened a new read (its old one broke): the old must not take batches.
            previous.cancel()
        try:
            while True:
                yield await box.next_batch()
        finally:
            if self._readers.get(channel) is reader:  # not taken over by a newer read
                del self._readers[channel]
                self._outboxes.pop(channel, None)
                await box.close()

    def _outbox(self, channel: str) -> Outbox:
        box = self._outboxes.get(channel)
        if box is None:
            box = self._outboxes[channel] = Outbox()
        return box

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
        model = self._step_model()
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

    def _step_model(self) -> StepTimeModel:
        """The step-time model fitted to the recent steps, refitted at most once a second: a
        fit takes a few milliseconds of the engine's GIL, and the front asks several times a
        second."""
        now = time.monotonic()
        if self._fitted is None or now - self._fitted[0] >= _REFIT_S:
            e = self.engine
            self._fitted = (now, StepTimeModel.from_steps(e.stats.recent(256), prior=e.step_prior))
        return self._fitted[1]

    def recent_steps(self, n: int) -> list[Any]:
        return self.engine.stats.recent(n)

    async def call(self, fn: Callable[[Engine], T]) -> T:
        """Run `fn(engine)` on the engine's thread (a capacity probe); the actor's event loop
        keeps serving meanwhile."""
        return await asyncio.to_thread(self.async_engine.call, fn)

    async def set_step_prior(self, prior: StepCoefficients) -> None:
        await asyncio.to_thread(self.async_engine.call, lambda e: e.set_step_prior(prior))
        self._fitted = None  # the next fit starts from the new prior

    def shutdown(self) -> None:
        self.async_engine.shutdown()
