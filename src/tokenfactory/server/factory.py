"""The factory behind the HTTP routes: who may ask, at which tier, and what it cost.

`Factory` owns the running engine, the tier catalog and what this hardware opens, billing
and metrics. Each admitted request becomes a `Generation`, which streams the engine's deltas
and is settled in the ledger exactly once, whatever ends it: completion, an error, a client
that went away, or a server shutting down.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path

from starlette.requests import Request

from tokenfactory.billing import (
    ApiKey,
    Billing,
    BillingInputError,
    InsufficientQuotaError,
    InvalidApiKeyError,
    LedgerUnavailableError,
    RateLimitExceededError,
    Reservation,
    TierNotAllowedError,
)
from tokenfactory.billing.tasks import check_task_id
from tokenfactory.engine.async_engine import AsyncEngine
from tokenfactory.engine.engine import Engine
from tokenfactory.engine.errors import (
    ContextLengthExceededError,
    EngineClosedError,
    EngineDeadError,
)
from tokenfactory.engine.errors import InvalidRequestError as EngineInvalidRequest
from tokenfactory.engine.outputs import RequestOutput
from tokenfactory.engine.sampling.logprobs import TokenLogprob
from tokenfactory.server import errors
from tokenfactory.server.capacity import Capacity, TierStatus, tier_statuses
from tokenfactory.server.completion_shapes import Usage
from tokenfactory.server.engine_protocol import EngineView, ServingEngine
from tokenfactory.server.metrics import FactoryMetrics
from tokenfactory.server.prepare import PreparedRequest
from tokenfactory.tiers import (
    ServiceTerms,
    Tier,
    TierCatalog,
    UnknownTierError,
    decode_speed,
    is_auto,
)

log = logging.getLogger(__name__)

TASK_ID_HEADER = "X-Task-Id"
TASK_ID_FIELD = "metadata.task_id"
# The X-Task-Id header of the request being handled, set by `remember_task_id_header` (an
# app-wide dependency) so `Factory.start` reads it whichever API's route admitted the request.
_task_id_header: ContextVar[str | None] = ContextVar("task_id_header", default=None)


async def remember_task_id_header(request: Request) -> None:
    _task_id_header.set(request.headers.get(TASK_ID_HEADER))


def request_task_id(header: str | None, body: str | None) -> str | None:
    """The request's task id, from the X-Task-Id header or the body's metadata.task_id (they
    must agree when both are sent); a 400 naming the parameter when it is unusable."""
    for value, param in ((header, TASK_ID_HEADER), (body, TASK_ID_FIELD)):
        if value is not None:
            try:
                check_task_id(value, param)
            except BillingInputError as exc:
                raise errors.invalid_request(f"Invalid '{param}': {exc}.", param) from None
    if header is not None and body is not None and header != body:
        raise errors.invalid_request(
            f"The {TASK_ID_HEADER} header ({header!r}) and {TASK_ID_FIELD} ({body!r}) disagree:"
            " send the task id once, or the same in both.",
            TASK_ID_FIELD,
        )
    return header if header is not None else body


@dataclass
class FactoryConfig:
    served_model_name: str
    data_dir: Path
    max_waiting: int = 1024  # queued requests beyond this get 503 overloaded
    aliases: tuple[str, ...] = ()  # other names the model answers to
    # Replicas a tier is bound to (the tiers file's [pools], with --replicas): for /v1/tiers.
    tier_pools: dict[str, tuple[int, ...]] = field(default_factory=dict)


class Factory:
    def __init__(
        self,
        engine: EngineView,
        catalog: TierCatalog,
        billing: Billing,
        capacity: Capacity,
        config: FactoryConfig,
        async_engine: ServingEngine | None = None,
    ):
        """`engine` describes the model and the scheduler's state; `async_engine` serves
        (one in-process `AsyncEngine` over an `Engine`, or a fleet of replicas)."""
        self.engine = engine
        self.catalog = catalog
        self.billing = billing
        self.capacity = capacity
        self.config = config
        self.metrics = FactoryMetrics()
        self.statuses: dict[str, TierStatus] = tier_statuses(catalog, capacity)
        for name, status in self.statuses.items():
            self.metrics.tier_open.labels(name).set(1 if status.available else 0)
        if async_engine is None:
            assert isinstance(engine, Engine), "a view of an engine comes with its server"
            async_engine = AsyncEngine(engine)
        self.async_engine: ServingEngine = async_engine
        self.in_flight: dict[str, Generation] = {}
        self.accepting = True
        self.fingerprint = f"tf-{secrets.token_hex(4)}"
        # Ledger rows are written on one thread of their own, in settlement order, so a
        # database round trip never holds up the event loop (and every stream with it).
        self.ledger_writes = concurrent.futures.ThreadPoolExecutor(1, "ledger-settle")
        self.started_at = int(time.time())

    # -- who and what ---------------------------------------------------------------------------

    @property
    def model_names(self) -> list[str]:
        return [self.config.served_model_name, *self.config.aliases]

    def check_model(self, model: str) -> None:
        if model not in self.model_names:
            raise errors.model_not_found(model, [self.config.served_model_name])

    def authenticate(self, authorization: str | None) -> ApiKey:
        raw = None
        if authorization:
            scheme, _, value = authorization.partition(" ")
            if scheme.lower() == "bearer" and value.strip():
                raw = value.strip()
        if raw is None:
            raise errors.invalid_api_key(
                "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'; "
                f"local keys are in {self.config.data_dir / 'local-keys.json'}."
            )
        try:
            return self.billing.authenticate(raw)
        except InvalidApiKeyError:
            raise errors.invalid_api_key(f"Incorrect API key provided: {_redact(raw)}.") from None
        except LedgerUnavailableError as exc:
            raise errors.ledger_unavailable(exc.message, exc.retry_after_s) from None

    def choose_tier(self, key: ApiKey, service_tier: str | None) -> Tier:
        """The tier a request runs at: what it asked for, mapped, allowed and open here."""
        try:
            tier = self.catalog.resolve(service_tier, key.tier)
        except UnknownTierError as exc:
            raise errors.invalid_request(str(exc), "service_tier") from None
        if is_auto(service_tier) and not self.statuses[tier.name].available:
            # auto means "whatever my key gets": the best open tier at or below it.
            open_tiers = [
                t
                for t in self.catalog.tiers
                if t.rank <= tier.rank and self.statuses[t.name].available
            ]
            if open_tiers:
                tier = open_tiers[-1]
        try:
            self.billing.check_tier(key, tier.name)
        except TierNotAllowedError as exc:
            raise errors.tier_not_allowed(tier.name, list(exc.allowed)) from None
        status = self.statuses[tier.name]
        if not status.available:
            raise errors.tier_unavailable(tier.name, status.reason or "closed.")
        return tier

    # -- admission --------------------------------------------------------------------------

    async def start(
        self, key: ApiKey, prepared: PreparedRequest, tier: Tier, received_at: float
    ) -> Generation:
        """Reserve the request's cost, queue it in the engine, and hand back its Generation.
        A request that asked for `service_tier=auto` (or none) may be started at a slower tier
        when its own is full (it is then billed at the tier delivered). The request's task id
        (X-Task-Id or metadata.task_id) is stored with it and held to the key's budget per task.
        """
        task_id = request_task_id(_task_id_header.get(), prepared.task_id)
        health = self.async_engine.health
        if health.is_dead:  # refused before anything is reserved
            self.metrics.requests.labels(self.model_label, tier.name, "engine_unavailable").inc()
            raise errors.engine_unavailable(health)
        if not self.accepting or not self.async_engine.is_running:
            self.metrics.requests.labels(self.model_label, tier.name, "overloaded").inc()
            raise errors.overloaded("The server is shutting down; retry on another replica.", 1)
        if self.engine.scheduler.num_waiting >= self.config.max_waiting:
            self.metrics.requests.labels(self.model_label, tier.name, "overloaded").inc()
            raise errors.overloaded(
                "The server has too many queued requests; retry shortly.",
                retry_after_s=2.0,
            )
        prefix = "chatcmpl" if prepared.kind == "chat" else "cmpl"
        request_id = f"{prefix}-{secrets.token_hex(12)}"
        try:
            reservation = await asyncio.to_thread(
                self.billing.admit,
                key,
                request_id=request_id,
                model=self.config.served_model_name,
                tier=tier,
                prompt_tokens=len(prepared.prompt_ids),
                max_completion_tokens=prepared.max_completion_tokens,
                task_id=task_id,
            )
        except RateLimitExceededError as exc:
            self.metrics.requests.labels(self.model_label, tier.name, "rate_limited").inc()
            raise errors.rate_limited(str(exc), exc.retry_after_s, exc.headers) from None
        except InsufficientQuotaError as exc:
            self.metrics.requests.labels(self.model_label, tier.name, "insufficient_quota").inc()
            raise errors.insufficient_quota(str(exc)) from None
        except LedgerUnavailableError as exc:
            self.metrics.requests.labels(self.model_label, tier.name, "ledger_unavailable").inc()
            raise errors.ledger_unavailable(exc.message, exc.retry_after_s) from None
        gen = Generation(self, key, tier, prepared, reservation, request_id, received_at)
        self.in_flight[request_id] = gen
        try:
            await self.async_engine.add_request(
                prepared.prompt_ids,
                prepared.params,
                request_id,
                terms=request_terms(self.catalog, tier, prepared.service_tier, received_at),
                cache_key=prepared.cache_key,
            )
        except ContextLengthExceededError as exc:
            gen.settle("rejected", error=str(exc))
            await gen.recorded()
            raise errors.context_length_exceeded(str(exc), exc.param) from None
        except EngineInvalidRequest as exc:
            gen.settle("rejected", error=str(exc))
            await gen.recorded()
            raise errors.invalid_request(str(exc), exc.param) from None
        except EngineDeadError as exc:  # it died while this request was being queued
            gen.settle("error", error=str(exc))
            await gen.recorded()
            raise errors.engine_unavailable(exc.health) from None
        except EngineClosedError:
            gen.settle("shutdown", error="the engine is shut down")
            await gen.recorded()
            raise errors.overloaded("The server is shutting down.", 1) from None
        except BaseException:
            gen.settle("error", error="submission failed")
            raise
        return gen

    @property
    def model_label(self) -> str:
        return self.config.served_model_name

    # -- observability -------------------------------------------------------------------------

    def refresh_gauges(self) -> None:
        health = self.async_engine.health
        self.metrics.observe_engine_health(not health.is_dead, health.failed_steps)
        sched = self.engine.scheduler
        self.metrics.running.set(sched.num_running)
        self.metrics.waiting.set(sched.num_waiting)
        self.metrics.kv_usage.set(self.engine.block_manager.usage)

    # -- shutdown ------------------------------------------------------------------------------

    def stop_accepting(self) -> None:
        self.accepting = False

    def abort_in_flight(self) -> None:
        """End every running request now; each handler then settles its own request."""
        for gen in list(self.in_flight.values()):
            gen.abort()

    async def shutdown(self) -> None:
        """Abort what is still running, settle everything, close the ledger."""
        self.accepting = False
        await asyncio.to_thread(self.async_engine.shutdown)
        # Streams end as the engine stops; give their handlers a moment to settle themselves.
        for _ in range(50):
            if not self.in_flight:
                break
            await asyncio.sleep(0.02)
        for gen in list(self.in_flight.values()):
            gen.settle("shutdown", error="the server shut down before the request finished")
        await asyncio.to_thread(self.ledger_writes.shutdown, wait=True)  # every row written
        self.billing.close()


def _redact(raw: str) -> str:
    return raw[:5] + "*" * 4 + raw[-2:] if len(raw) > 12 else "****"


@dataclass
class Generation:
    """One admitted request from engine queue to ledger row."""

    factory: Factory
    key: ApiKey
    tier: Tier  # requested (after mapping)
    prepared: PreparedRequest
    reservation: Reservation
    request_id: str
    received_at: float
    text: list[str] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    cached_tokens: int = 0
    completion_tokens: int = 0  # delivered (streamed, or generated for a whole response)
    first_token_time: float | None = None
    last_token_time: float | None = None
    first_scheduled_time: float | None = None
    finish_reason: str | None = None
    stop_sequence: str | None = None  # the stop string that ended it, if one did
    client_disconnected: bool = False
    settled_tier: Tier | None = None
    _settled: bool = False
    _ledger_write: concurrent.futures.Future[None] | None = None
    _iter: AsyncIterator[RequestOutput] | None = None
    _peeked: list[RequestOutput] = field(default_factory=list)

    @property
    def prompt_tokens(self) -> int:
        return len(self.prepared.prompt_ids)

    async def _engine_outputs(self) -> AsyncIterator[RequestOutput]:
        stream = self.factory.async_engine.outputs(self.request_id)
        async with contextlib.aclosing(stream) as outputs:
            async for out in outputs:
                if out.first_scheduled_time is not None:
                    self.first_scheduled_time = out.first_scheduled_time
                self.cached_tokens = out.cached_tokens
                yield out

    def _source(self) -> AsyncIterator[RequestOutput]:
        if self._iter is None:
            self._iter = self._engine_outputs()
        return self._iter

    async def peek(self) -> RequestOutput | None:
        """Wait for the first delta (None if the stream ended first); `outputs` yields it too."""
        try:
            out = await self._source().__anext__()
        except StopAsyncIteration:
            return None
        self._peeked.append(out)
        return out

    async def close_stream(self) -> None:
        await self._source().aclose()  # type: ignore[attr-defined]

    async def outputs(self) -> AsyncIterator[RequestOutput]:
        """The engine's deltas; the caller counts what it delivered with `delivered`."""
        src = self._source()
        try:
            while self._peeked:
                yield self._peeked.pop(0)
            async for out in src:
                yield out
        finally:
            await src.aclose()  # type: ignore[attr-defined]

    def delivered(self, out: RequestOutput) -> None:
        """Count a delta as delivered to the client (called once it was handed over)."""
        if out.finished and isinstance(out.stop_reason, str):
            self.stop_sequence = out.stop_reason
        if not out.token_ids:
            if out.finished:
                self.finish_reason = str(out.finish_reason or "stop")
            return
        now = out.finished_time or time.monotonic()
        if self.first_token_time is None:
            self.first_token_time = out.first_token_time or now
        elif self.last_token_time is not None:
            self.factory.metrics.itl.labels(self.factory.model_label, self.tier.name).observe(
                max(0.0, now - self.last_token_time)
            )
        self.last_token_time = now
        self.completion_tokens += len(out.token_ids)
        self.text.append(out.text)
        if out.logprobs:
            self.logprobs.extend(out.logprobs)
        if out.finished:
            self.finish_reason = str(out.finish_reason or "stop")
        self.factory.billing.record_progress(
            self.reservation,
            prompt_tokens=self.prompt_tokens,
            cached_tokens=self.cached_tokens,
            completion_tokens=self.completion_tokens,
            tier_so_far=self.tier.name,
        )

    @property
    def usage(self) -> Usage:
        return Usage(
            self.prompt_tokens, min(self.cached_tokens, self.prompt_tokens), self.completion_tokens
        )

    def abort(self) -> None:
        self.factory.async_engine.abort(self.request_id)

    def withhold(self) -> None:
        """Nothing reached the client after all (a whole response that ended in an error):
        settle bills none of the tokens generated for it."""
        self.completion_tokens = 0
        self.text.clear()
        self.logprobs.clear()

    def settle(
        self, outcome: str, client_disconnected: bool = False, error: str | None = None
    ) -> Tier:
        """Bill what was delivered, at the tier its measured speed earned. Idempotent.

        The tier is decided here; the ledger row is written on the factory's ledger thread
        (`recorded` waits for it), so no SQL runs on the event loop."""
        if self._settled:
            assert self.settled_tier is not None
            return self.settled_tier
        self._settled = True
        self.factory.in_flight.pop(self.request_id, None)
        if outcome not in ("stop", "length"):
            self.abort()
        self.client_disconnected = self.client_disconnected or client_disconnected
        ttft = None if self.first_token_time is None else self.first_token_time - self.received_at
        speed = decode_speed(self.completion_tokens, self.first_token_time, self.last_token_time)
        tier = self.factory.catalog.delivered(self.tier.name, ttft, speed)
        # Nothing is billed for a request that never reached its first token.
        prompt = self.prompt_tokens if self.completion_tokens else 0
        cached = min(self.cached_tokens, prompt)
        queue = None
        if self.first_scheduled_time is not None:
            queue = max(0.0, self.first_scheduled_time - self.received_at)
        self.settled_tier = tier
        billing, reservation = self.factory.billing, self.reservation
        disconnected, request_id = self.client_disconnected, self.request_id
        completion = self.completion_tokens

        def write_row() -> None:
            try:
                billing.settle(
                    reservation,
                    tier_delivered=tier,
                    prompt_tokens=prompt,
                    cached_tokens=cached,
                    completion_tokens=completion,
                    finish_reason=outcome,
                    queue_time_s=queue,
                    ttft_s=ttft,
                    decode_tokens_per_s=speed,
                    client_disconnected=disconnected,
                    error=error,
                )
            except Exception:  # the reservation stays open and is reconciled at the next start
                log.exception("settling %s failed", request_id)

        try:
            self._ledger_write = self.factory.ledger_writes.submit(write_row)
        except RuntimeError:  # the writer already stopped (shutdown): write it here
            write_row()
        self._observe(outcome, tier, prompt, cached, ttft, speed, queue)
        return tier

    async def recorded(self) -> None:
        """Wait until the ledger row of a settled request is written (at once if it is)."""
        if self._ledger_write is not None:
            await asyncio.shield(asyncio.wrap_future(self._ledger_write))

    def _observe(self, outcome, tier, prompt, cached, ttft, speed, queue) -> None:
        m = self.factory.metrics
        model = self.factory.model_label
        asked = self.tier.name
        label = "disconnected" if self.client_disconnected else outcome
        m.requests.labels(model, asked, label).inc()
        m.prompt_tokens.labels(model, tier.name).inc(prompt)
        m.cached_tokens.labels(model, tier.name).inc(cached)
        m.completion_tokens.labels(model, tier.name).inc(self.completion_tokens)
        m.revenue.labels(model, tier.name).inc(
            tier.cost_micro_usd(prompt, cached, self.completion_tokens)
        )
        if tier.name != asked and self.completion_tokens:
            m.promise_misses.labels(model, asked).inc()
        if ttft is not None:
            m.ttft.labels(model, asked).observe(ttft)
        if speed is not None:
            m.decode_speed.labels(model, asked).observe(speed)
        if queue is not None:
            m.queue.labels(model, asked).observe(queue)
        m.e2e.labels(model, asked).observe(time.monotonic() - self.received_at)


def request_terms(
    catalog: TierCatalog, tier: Tier, service_tier: str | None, received_at: float
) -> ServiceTerms:
    """What the scheduler is told about a request: its tier's terms, when it arrived, and
    whether it may start at a slower tier (it asked for `service_tier=auto`, or for none)."""
    return catalog.service_terms(tier, downgradable=is_auto(service_tier), received_at=received_at)
