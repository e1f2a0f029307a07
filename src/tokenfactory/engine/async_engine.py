"""AsyncEngine: the step loop on a background thread, one async stream of deltas per request.

All engine state is touched by the loop thread only. Other threads talk to it through a
command queue (add, abort) and get results back through futures and per-request asyncio
queues, so submission is thread-safe and the event loop never blocks on a model step.

A step that raises ends every request in the engine with `EngineStepError`; after
`max_consecutive_failures` in a row the engine is dead (`health`): its requests end with
`EngineDeadError`, the loop stops, and new work is refused at once with the same error.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import queue
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from tokenfactory.engine.engine import Engine
from tokenfactory.engine.errors import EngineClosedError, EngineDeadError, EngineStepError
from tokenfactory.engine.health import DEFAULT_MAX_CONSECUTIVE_FAILURES, EngineHealth
from tokenfactory.engine.outputs import RequestOutput
from tokenfactory.engine.sampling_params import SamplingParams
from tokenfactory.tiers import ServiceTerms

log = logging.getLogger(__name__)

T = TypeVar("T")
_END = object()  # stream sentinel: the request is over (finished or aborted)


@dataclass
class _Stream:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[Any]

    def put(self, item: Any) -> None:
        # A closed event loop has nobody listening; ending the other streams matters more.
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)


def _put_all(items: list[tuple[asyncio.Queue, Any]]) -> None:
    for q, item in items:
        q.put_nowait(item)


class AsyncEngine:
    """Drive an `Engine` from a background thread; `generate` streams `RequestOutput`s."""

    def __init__(
        self,
        engine: Engine | Callable[[], Engine],
        idle_wait_s: float = 0.05,
        max_consecutive_failures: int = DEFAULT_MAX_CONSECUTIVE_FAILURES,
    ):
        """`engine` may be a function that builds one: it then runs on the engine's thread,
        so that loading, warm-up and serving all happen on one thread (see `call`).
        `max_consecutive_failures` failed steps in a row mark the engine dead."""
        if max_consecutive_failures < 1:
            raise ValueError("max_consecutive_failures must be at least 1")
        self._commands: queue.Queue[tuple[str, Any, concurrent.futures.Future | None]] = (
            queue.Queue()
        )
        self._streams: dict[str, _Stream] = {}
        self._idle_wait_s = idle_wait_s
        self._max_failures = max_consecutive_failures
        self._health = EngineHealth()
        self._closed = False  # no new work: shutting down, shut down, or dead
        # Set under the lock once the loop has answered its last command: a command queued
        # after that would wait forever, so `_submit` refuses it instead.
        self._submit_lock = threading.Lock()
        self._stopped = False
        self._error: BaseException | None = None
        built: concurrent.futures.Future = concurrent.futures.Future()
        if isinstance(engine, Engine):
            self.engine = engine
            built.set_result(engine)
        self._thread = threading.Thread(
            target=self._run, args=(engine, built), name="tokenfactory-engine", daemon=True
        )
        self._thread.start()
        try:
            self.engine = built.result()
        except BaseException:
            self._closed = True
            raise

    # -- public API (any thread / event loop) ----------------------------------------------------

    async def generate(
        self,
        prompt: str | list[int],
        params: SamplingParams | None = None,
        request_id: str | None = None,
        terms: ServiceTerms | None = None,
    ) -> AsyncIterator[RequestOutput]:
        """Submit a request and stream its deltas; leaving the iteration early aborts it."""
        rid = await self.add_request(prompt, params, request_id, terms)
        async with contextlib.aclosing(self.outputs(rid)) as outputs:
            async for out in outputs:
                yield out

    async def outputs(self, request_id: str) -> AsyncGenerator[RequestOutput, None]:
        """Stream the deltas of a request queued with `add_request`; leaving early aborts it.

        The stream ends without a finished output when the request is aborted or the engine
        shuts down; a failed engine step raises `EngineStepError` here, a dead engine
        `EngineDeadError`.
        """
        rid = request_id
        stream = self._streams.get(rid)
        if stream is None:
            if not self._closed:
                raise KeyError(f"unknown request {rid!r}")
            if self._health.is_dead:  # it died between queuing this request and now
                raise EngineDeadError(self._health)
            return
        finished = False
        try:
            while True:
                item = await stream.queue.get()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finished:
                    finished = True
                    return
        finally:
            if not finished:
                self.abort(rid)
            self._streams.pop(rid, None)

    async def add_request(
        self,
        prompt: str | list[int],
        params: SamplingParams | None = None,
        request_id: str | None = None,
        terms: ServiceTerms | None = None,
        cache_key: str | None = None,
    ) -> str:
        """Queue a request and return its id; validation errors are raised here, and
        `EngineDeadError` (an `EngineClosedError`) at once when the engine is dead.
        `cache_key` is a routing hint for a fleet of engines; one engine has no choice to
        make, so it is not used here."""
        loop = asyncio.get_running_loop()
        stream = _Stream(loop, asyncio.Queue())
        fut: concurrent.futures.Future = concurrent.futures.Future()
        self._submit("add", (prompt, params, request_id, terms, stream), fut)
        return await asyncio.wrap_future(fut)

    def abort(self, request_id: str) -> None:
        """Cancel a request from any thread: its stream ends now (after the deltas already
        handed to it), and its blocks are freed on the next loop turn, which may be a long
        step away (a shutdown's grace period must not wait for it)."""
        stream = self._streams.get(request_id)
        if stream is not None:
            stream.put(_END)
        with contextlib.suppress(EngineClosedError):  # the loop ended every request already
            self._submit("abort", request_id, None)

    def call(self, fn: Callable[[Engine], T], timeout: float | None = None) -> T:
        """Run `fn(engine)` on the engine's own thread and return its result (blocking).

        For work that drives the engine directly (a warm-up, a capacity probe): keeping every
        model computation on one thread matters on CPUs, where each thread that runs parallel
        torch ops gets its own OpenMP team and two teams on the same cores slow each other.
        """
        fut: concurrent.futures.Future = concurrent.futures.Future()
        self._submit("call", fn, fut)
        return fut.result(timeout)

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop the loop; unfinished requests end as aborted."""
        if self._closed:
            return
        self._closed = True
        self._commands.put(("stop", None, None))
        self._thread.join(timeout)

    @property
    def is_running(self) -> bool:
        return self._thread.is_alive() and not self._closed

    @property
    def health(self) -> EngineHealth:
        """The loop's health now (a frozen snapshot, safe to read from any thread)."""
        return self._health

    def _submit(self, kind: str, arg: Any, fut: concurrent.futures.Future | None) -> None:
        with self._submit_lock:
            if self._closed or self._stopped:
                raise self._closed_error()
            self._commands.put((kind, arg, fut))

    def _closed_error(self) -> EngineClosedError:
        health = self._health
        if health.is_dead:
            return EngineDeadError(health)
        return EngineClosedError("the engine is shut down")

    # -- the loop thread ------------------------------------------------------------------------

    def _run(self, engine: Engine | Callable[[], Engine], built: concurrent.futures.Future) -> None:
        if not isinstance(engine, Engine):
            try:
                self.engine = engine()
            except BaseException as exc:
                built.set_exception(exc)
                return
            built.set_result(self.engine)
        self._loop()

    def _loop(self) -> None:
        try:
            while True:
                block = not self.engine.has_unfinished()
                if not self._drain_commands(block):
                    break
                if not self.engine.has_unfinished():
                    continue
                try:
                    outputs = self.engine.step()
                except Exception as exc:  # a failed step must not strand the waiting callers
                    log.exception("engine step failed")
                    self._health = self._health.after_failure(exc, self._max_failures)
                    if self._health.is_dead:
                        break
                    self._fail_all(exc)
                    continue
                self._health = self._health.after_success()
                self._deliver(outputs)
        except Exception as exc:  # the loop itself broke: nothing would ever serve again
            log.exception("engine loop failed")
            self._health = self._health.died("the engine loop failed", exc)
        finally:
            self._closed = True
            if self._health.is_dead:
                log.error(
                    "engine is dead: %s (%s); refusing all work until restarted",
                    self._health.reason,
                    self._health.last_error,
                )
            self._end_all()
            with self._submit_lock:
                self._stopped = True
            self._fail_pending_commands()

    def _deliver(self, outputs: list[RequestOutput]) -> None:
        """Hand a step's outputs to their streams: one event-loop wake-up per loop, not per
        request, so 64 streams cost the server's event loop one callback a step."""
        batches: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Queue, Any]]] = {}
        for out in outputs:
            stream = self._streams.get(out.request_id)
            if stream is not None:
                batches.setdefault(stream.loop, []).append((stream.queue, out))
        for loop, items in batches.items():
            try:
                loop.call_soon_threadsafe(_put_all, items)
            except RuntimeError:  # that event loop is closed: nobody is listening any more
                pass

    def _drain_commands(self, block: bool) -> bool:
        """Apply queued commands; False means stop. Blocks briefly when idle."""
        try:
            cmd = self._commands.get(timeout=self._idle_wait_s) if block else None
            if cmd is None:
                cmd = self._commands.get_nowait()
        except queue.Empty:
            return True
        while True:
            kind, arg, fut = cmd
            if kind == "stop":
                return False
            if kind == "add":
                self._apply_add(arg, fut)
            elif kind == "call":
                assert fut is not None
                try:
                    fut.set_result(arg(self.engine))
                except Exception as exc:
                    fut.set_exception(exc)
            elif kind == "abort":
                if self.engine.abort(arg):
                    stream = self._streams.get(arg)
                    if stream is not None:
                        stream.put(_END)
            try:
                cmd = self._commands.get_nowait()
            except queue.Empty:
                return True

    def _apply_add(self, arg: tuple, fut: concurrent.futures.Future | None) -> None:
        prompt, params, request_id, terms, stream = arg
        assert fut is not None
        try:
            rid = self.engine.add_request(prompt, params, request_id, terms)
        except Exception as exc:
            fut.set_exception(exc)
            return
        self._streams[rid] = stream
        fut.set_result(rid)

    def _fail_all(self, exc: Exception) -> None:
        """End every request after a failed step. All of them, not only the step's batch:
        the step may have left any of them half-updated (blocks, computed tokens), and
        the engine cannot say which."""
        for rid in self.engine.unfinished_request_ids():
            self.engine.abort(rid)
            stream = self._streams.get(rid)
            if stream is not None:
                stream.put(EngineStepError(f"an engine step failed: {exc}"))

    def _end_all(self) -> None:
        """The loop is over: end every stream first (with the engine's error when it died),
        then free what the engine held, which may fail on a broken engine."""
        dead = self._health.is_dead
        try:
            unfinished = set(self.engine.unfinished_request_ids())
        except Exception:
            unfinished = set(self._streams)
        for rid, stream in list(self._streams.items()):
            stream.put(EngineDeadError(self._health) if dead and rid in unfinished else _END)
        self._streams.clear()
        for rid in unfinished:
            try:
                self.engine.abort(rid)
            except Exception:
                log.exception("freeing request %s failed", rid)
                break

    def _fail_pending_commands(self) -> None:
        while True:
            try:
                _kind, _arg, fut = self._commands.get_nowait()
            except queue.Empty:
                return
            if fut is not None and not fut.done():
                fut.set_exception(self._closed_error())
