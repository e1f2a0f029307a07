"""The front's handle on the replicas: an engine to the server, a router underneath.

`FleetClient` offers what the server asks of an `AsyncEngine` (`ServingEngine`): queue a
request, stream its deltas, abort it, say whether serving is possible. Each request goes
to the replica the router picks; a replica's state comes from a poller that asks every
replica for its stats a few times a second.

Every request's deltas from one replica come back through one stream that the front keeps
open to it (`EngineReplica.subscribe`), one batch per read, and are sorted into per-request
queues here (`Inboxes`).

A replica that dies: its requests that had no token yet are sent to another replica; its
started streams end with `EngineStepError` (the server ends them with an error and bills
what was delivered). Ray restarts the actor; once its stats answer again it rejoins.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from tokenfactory.engine.errors import EngineDeadError, EngineStepError, InvalidRequestError
from tokenfactory.engine.health import EngineHealth
from tokenfactory.engine.outputs import RequestOutput
from tokenfactory.engine.sampling_params import SamplingParams
from tokenfactory.fleet.inboxes import Ended, Inboxes, Lost
from tokenfactory.fleet.messages import ReplicaError, ReplicaStats
from tokenfactory.fleet.prefix_index import PrefixIndex
from tokenfactory.fleet.router import NoReplicaError, ReplicaLoad, RoutingRules, choose_replica
from tokenfactory.scheduling.step_model import StepCoefficients
from tokenfactory.tiers import ServiceTerms

log = logging.getLogger(__name__)
T = TypeVar("T")
_STATS_TIMEOUT_S = 3.0  # a replica whose stats take longer is taken out of routing


@dataclass
class ReplicaState:
    """What the front knows of one replica (touched by the event loop and the poller)."""

    index: int
    actor: Any
    stats: ReplicaStats | None = None
    available: bool = False
    in_flight: int = 0
    routed: int = 0  # requests this front sent it, over its life
    restarts: int = 0  # incarnations seen after the first
    failed_steps_before: int = 0  # failed steps of its earlier incarnations
    pending_stats: Any = None
    pending_since: float = 0.0
    outputs: _OutputStream | None = None  # the open read of its outputs (event loop only)

    def load(self) -> ReplicaLoad:
        s = self.stats
        return ReplicaLoad(
            self.index,
            self.available,
            s.waiting if s else 0,
            s.running if s else 0,
            self.in_flight,
        )


@dataclass
class _OutputStream:
    """One open read of a replica's outputs: the requests waiting on it, and its task."""

    inboxes: Inboxes = field(default_factory=Inboxes)
    task: asyncio.Task[None] | None = None


@dataclass
class _Request:
    prompt: list[int]
    params: SamplingParams | None
    request_id: str
    terms: ServiceTerms | None
    cache_key: str | None
    replica: int = -1
    inbox: asyncio.Queue[Any] | None = None  # its deltas, from its replica's output stream
    inboxes: Inboxes | None = None  # where that queue is registered
    tokens_received: int = 0
    tried: set[int] = field(default_factory=set)


class FleetClient:
    def __init__(
        self,
        actors: list[Any],
        rules: RoutingRules | None = None,
        poll_s: float = 0.25,
        on_shutdown: Callable[[], None] | None = None,
    ):
        import ray

        self._ray = ray
        self._actor_errors: tuple[type[BaseException], ...] = (
            ray.exceptions.RayActorError,
            ray.exceptions.ActorUnavailableError,
        )
        self.replicas = [ReplicaState(i, a) for i, a in enumerate(actors)]
        self.rules = rules or RoutingRules()
        self.prefixes = PrefixIndex()  # guarded by self._lock
        self.step_prior: StepCoefficients | None = None
        self._requests: dict[str, _Request] = {}
        self._channel = uuid.uuid4().hex  # names this front's outboxes on the replicas
        self._turns = 0  # routing attempts so far: round-robin's turn
        self._closed = False
        self._poll_s = poll_s
        self._on_shutdown = on_shutdown
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._poll_once(wait_s=30.0)  # know who is up before the first request
        self._poller = threading.Thread(target=self._poll, name="fleet-stats", daemon=True)
        self._poller.start()

    # -- ServingEngine ---------------------------------------------------------------------

    @property
    def health(self) -> EngineHealth:
        """Healthy while any replica can serve; dead (for now: restarts revive it) when none
        can."""
        failed = sum(
            r.failed_steps_before + (r.stats.failed_steps if r.stats else 0) for r in self.replicas
        )
        health = EngineHealth(failed_steps=failed, restarts_itself=True)
        if any(r.available for r in self.replicas):
            return health
        return health.died("every engine replica is down (restarting or failed)")

    @property
    def is_running(self) -> bool:
        return not self._closed

    async def add_request(
        self,
        prompt: str | list[int],
        params: SamplingParams | None = None,
        request_id: str | None = None,
        terms: ServiceTerms | None = None,
        cache_key: str | None = None,
    ) -> str:
        if isinstance(prompt, str):
            raise InvalidRequestError("the fleet takes prompts as token ids", "prompt")
        if self._closed:
            raise self._closed_error()
        rid = request_id or f"fleet-{uuid.uuid4().hex}"
        req = _Request(list(prompt), params, rid, terms, cache_key)
        await self._submit(req)
        self._requests[rid] = req
        return rid

    async def outputs(self, request_id: str) -> AsyncGenerator[RequestOutput, None]:
        """The request's deltas, with times moved onto this process's clock."""
        req = self._requests.get(request_id)
        if req is None:
            raise KeyError(f"unknown request {request_id!r}")
        finished = False
        try:
            while True:
                assert req.inbox is not None
                item = await req.inbox.get()
                if isinstance(item, Lost):
                    if self._closed:  # the fleet is shutting down: ended, like an abort
                        return
                    if req.tokens_received:
                        raise EngineStepError(
                            f"engine replica {req.replica} stopped while this request was "
                            f"streaming ({item.reason})"
                        )
                    log.warning(
                        "replica %d stopped before %s started: retrying", req.replica, request_id
                    )
                    self.abort(request_id)  # in case the replica lives on and holds it
                    self._release(req)
                    await self._submit(req)
                    continue
                if isinstance(item, Ended):
                    if item.error is not None:
                        raise item.error.exception()
                    return  # aborted on the replica
                req.tokens_received += len(item.token_ids)
                yield item
                if item.finished:
                    finished = True
                    return
        finally:
            if not finished:
                self.abort(request_id)
            self._requests.pop(request_id, None)
            self._release(req)

    def abort(self, request_id: str) -> None:
        req = self._requests.get(request_id)
        if req is None or req.replica < 0:
            return
        try:
            self.replicas[req.replica].actor.abort.remote(request_id)
        except Exception:  # a dead replica holds nothing to abort
            log.debug("abort of %s on replica %d failed", request_id, req.replica)

    def shutdown(self, timeout: float = 10.0) -> None:
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        self._poller.join(timeout)
        for r in self.replicas:
            try:
                self._ray.kill(r.actor, no_restart=True)
            except Exception:
                log.debug("replica %d was already gone", r.index)
        if self._on_shutdown is not None:
            self._on_shutdown()

    # -- set-up ----------------------------------------------------------------------------

    def call(self, fn: Callable[[Any], T], timeout: float | None = None) -> T:
        """Run `fn(engine)` on one available replica (they are identical) and return it."""
        replica = next((r for r in self.replicas if r.available), self.replicas[0])
        return self._ray.get(replica.actor.call.remote(fn), timeout=timeout)

    def set_step_prior(self, prior: StepCoefficients) -> None:
        """Give every replica the probe's step-time prior, now and after each restart."""
        self.step_prior = prior
        self._ray.get([r.actor.set_step_prior.remote(prior) for r in self.replicas])

    def recent_steps(self, n: int) -> list[Any]:
        replica = next((r for r in self.replicas if r.available), self.replicas[0])
        return self._ray.get(replica.actor.recent_steps.remote(n), timeout=_STATS_TIMEOUT_S)

    # -- routing ---------------------------------------------------------------------------

    async def _submit(self, req: _Request) -> None:
        """Send the request to a replica and wait until it is queued there; a replica that
        is down is marked so and the next one tried."""
        tier = req.terms.tier if req.terms is not None else None
        keys = self.prefixes.keys(req.prompt)
        while True:
            try:
                with self._lock:
                    loads = [r.load() for r in self.replicas]
                    turn, self._turns = self._turns, self._turns + 1
                    index = choose_replica(
                        loads,
                        self.rules,
                        tier,
                        self.prefixes.matches(keys),
                        cache_key=req.cache_key,
                        exclude=frozenset(req.tried),
                        turn=turn,
                    )
                    # Counted at once: requests arriving together must see each other's
                    # choice, not all pick the same replica before any is accepted.
                    self.replicas[index].in_flight += 1
            except NoReplicaError:
                raise EngineDeadError(self.health) from None
            replica = self.replicas[index]
            req.tried.add(index)
            inboxes = self._output_stream(replica)
            inbox = inboxes.open(req.request_id)  # before submitting: deltas may come first
            accepted_here = False
            try:
                try:
                    refusal: ReplicaError | None = await replica.actor.submit.remote(
                        self._channel, req.prompt, req.params, req.request_id, req.terms
                    )
                except self._actor_errors as exc:
                    log.warning(
                        "engine replica %d is down (%s): %s goes to another",
                        index,
                        type(exc).__name__,
                        req.request_id,
                    )
                    self._mark_down(index)
                    continue
                if refusal is not None and refusal.kind == "closed":
                    log.warning(
                        "engine replica %d refused %s (%s): it goes to another",
                        index,
                        req.request_id,
                        refusal.message,
                    )
                    self._mark_down(index)
                    continue
                if refusal is not None:
                    raise refusal.exception()
                accepted_here = True
            finally:
                if not accepted_here:
                    inboxes.close(req.request_id)
                    with self._lock:
                        replica.in_flight -= 1
            req.replica, req.inbox, req.inboxes = index, inbox, inboxes
            with self._lock:
                replica.routed += 1
                self.prefixes.record(keys, index)
            return

    def _output_stream(self, replica: ReplicaState) -> Inboxes:
        """The inboxes of the replica's open output stream in this event loop; opens one if
        there is none."""
        stream = replica.outputs
        loop = asyncio.get_running_loop()
        if stream is None or stream.task is None or stream.task.get_loop() is not loop:
            # None yet, or one left behind by an event loop that has ended.
            stream = replica.outputs = _OutputStream()
            stream.task = asyncio.ensure_future(self._read_outputs(replica, stream))
        return stream.inboxes

    async def _read_outputs(self, replica: ReplicaState, stream: _OutputStream) -> None:
        """Sort the replica's batches into their requests' inboxes until the stream breaks;
        then every request still waiting on it hears so."""
        reason = "its output stream ended"
        try:
            batches = replica.actor.subscribe.options(num_returns="streaming").remote(self._channel)
            async for ref in batches:
                stream.inboxes.deliver(await ref, time.monotonic())
        except self._actor_errors as exc:
            reason = type(exc).__name__
            self._mark_down(replica.index)
        except Exception as exc:  # any other break must still end the requests, not hang them
            log.exception("reading engine replica %d's outputs failed", replica.index)
            reason = type(exc).__name__
        finally:
            if replica.outputs is stream:
                replica.outputs = None
            stream.inboxes.lose_all(reason)

    def _release(self, req: _Request) -> None:
        if req.inboxes is not None:
            req.inboxes.close(req.request_id)
            req.inboxes = req.inbox = None
        if req.replica >= 0:
            with self._lock:
                self.replicas[req.replica].in_flight -= 1
            req.replica = -1

    def _mark_down(self, index: int) -> None:
        with self._lock:
            self.replicas[index].available = False

    def _closed_error(self) -> Exception:
        from tokenfactory.engine.errors import EngineClosedError

        return EngineClosedError("the engine is shut down")

    # -- the stats poller ------------------------------------------------------------------

    def _poll(self) -> None:
        while not self._stop.wait(self._poll_s):
            try:
                self._poll_once(wait_s=0.0)
            except Exception:  # the poller must outlive any one bad answer
                log.exception("polling the replicas failed")

    def _poll_once(self, wait_s: float) -> None:
        now = time.monotonic()
        for r in self.replicas:
            if r.pending_stats is None:
                r.pending_stats, r.pending_since = r.actor.stats.remote(), now
        pending = [r.pending_stats for r in self.replicas]
        self._ray.wait(pending, num_returns=len(pending), timeout=wait_s)
        for r in self.replicas:
            ready, _ = self._ray.wait([r.pending_stats], timeout=0)
            if not ready:
                if time.monotonic() - r.pending_since > _STATS_TIMEOUT_S:
                    self._mark_down(r.index)
                continue
            ref, r.pending_stats = r.pending_stats, None
            try:
                stats: ReplicaStats = self._ray.get(ref)
            except Exception as exc:  # down or restarting
                if r.available:
                    log.warning("engine replica %d is down: %s", r.index, type(exc).__name__)
                self._mark_down(r.index)
                continue
            self._observe(r, stats)

    def _observe(self, r: ReplicaState, stats: ReplicaStats) -> None:
        previous = r.stats
        if previous is not None and previous.started_at != stats.started_at:
            r.restarts += 1
            r.failed_steps_before += previous.failed_steps
            with self._lock:
                self.prefixes.forget(r.index)  # a new process starts with an empty cache
            log.warning("engine replica %d restarted (pid %d)", r.index, stats.pid)
        if self.step_prior is not None and not stats.has_step_prior:
            r.actor.set_step_prior.remote(self.step_prior)  # a restarted replica's prior
        if not stats.healthy and not self._closed:
            # A dead engine never serves again in its process: a new process might.
            log.error("engine replica %d is dead (%s): restarting it", r.index, stats.health_reason)
            self._ray.kill(r.actor, no_restart=False)
        with self._lock:
            r.stats = stats
            r.available = stats.healthy
