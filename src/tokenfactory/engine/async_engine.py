"""AsyncEngine: the step loop on a background thread, one async stream of deltas per request.

All engine state is touched by the loop thread only. Other threads talk to it through a
command queue (add, abort) and get results back through futures and per-request asyncio
queues, so submission is thread-safe and the event loop never blocks on a model step.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import queue
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from tokenfactory.engine.engine import Engine, RequestOutput
from tokenfactory.engine.errors import EngineClosedError
from tokenfactory.engine.sampling_params import SamplingParams

log = logging.getLogger(__name__)

_END = object()  # stream sentinel: the request is over (finished or aborted)


@dataclass
class _Stream:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[Any]

    def put(self, item: Any) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, item)


class AsyncEngine:
    """Drive an `Engine` from a background thread; `generate` streams `RequestOutput`s."""

    def __init__(self, engine: Engine, idle_wait_s: float = 0.05):
        self.engine = engine
        self._commands: queue.Queue[tuple[str, Any, concurrent.futures.Future | None]] = (
            queue.Queue()
        )
        self._streams: dict[str, _Stream] = {}
        self._idle_wait_s = idle_wait_s
        self._closed = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name="tokenfactory-engine", daemon=True)
        self._thread.start()

    # -- public API (any thread / event loop) ----------------------------------------------------

    async def generate(
        self,
        prompt: str | list[int],
        params: SamplingParams | None = None,
        request_id: str | None = None,
        metadata: dict | None = None,
    ) -> AsyncIterator[RequestOutput]:
        """Submit a request and stream its deltas; leaving the iteration early aborts it."""
        rid = await self.add_request(prompt, params, request_id, metadata)
        async with contextlib.aclosing(self.outputs(rid)) as outputs:
            async for out in outputs:
                yield out

    async def outputs(self, request_id: str) -> AsyncIterator[RequestOutput]:
        """Stream the deltas of a request queued with `add_request`; leaving early aborts it.

        The stream ends without a finished output when the request is aborted or the engine
        shuts down; a failed engine step raises here.
        """
        rid = request_id
        stream = self._streams[rid]
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
        metadata: dict | None = None,
    ) -> str:
        """Queue a request and return its id; validation errors are raised here."""
        if self._closed:
            raise EngineClosedError("the engine is shut down")
        loop = asyncio.get_running_loop()
        stream = _Stream(loop, asyncio.Queue())
        fut: concurrent.futures.Future = concurrent.futures.Future()
        self._commands.put(("add", (prompt, params, request_id, metadata, stream), fut))
        return await asyncio.wrap_future(fut)

    def abort(self, request_id: str) -> None:
        """Cancel a request from any thread; its blocks are freed on the next loop turn."""
        if not self._closed:
            self._commands.put(("abort", request_id, None))

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

    # -- the loop thread ------------------------------------------------------------------------

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
                    self._fail_all(exc)
                    continue
                for out in outputs:
                    stream = self._streams.get(out.request_id)
                    if stream is not None:
                        stream.put(out)
        finally:
            self._closed = True
            for rid in self.engine.unfinished_request_ids():
                self.engine.abort(rid)
            for stream in list(self._streams.values()):
                stream.put(_END)
            self._streams.clear()
            self._fail_pending_commands()

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
        prompt, params, request_id, metadata, stream = arg
        assert fut is not None
        try:
            rid = self.engine.add_request(prompt, params, request_id, metadata)
        except Exception as exc:
            fut.set_exception(exc)
            return
        self._streams[rid] = stream
        fut.set_result(rid)

    def _fail_all(self, exc: Exception) -> None:
        for rid in self.engine.unfinished_request_ids():
            self.engine.abort(rid)
            stream = self._streams.get(rid)
            if stream is not None:
                stream.put(RuntimeError(f"engine step failed: {exc}"))

    def _fail_pending_commands(self) -> None:
        while True:
            try:
                _kind, _arg, fut = self._commands.get_nowait()
            except queue.Empty:
                return
            if fut is not None and not fut.done():
                fut.set_exception(EngineClosedError("the engine is shut down"))
