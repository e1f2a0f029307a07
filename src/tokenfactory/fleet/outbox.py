"""A replica's outbox for one front: each request's deltas gathered between the front's reads.

The front keeps one stream per replica open (`EngineReplica.subscribe`), and each read takes
everything in the outbox as one `ChannelBatch`. A request is fed into the outbox by a pump
task that follows its engine stream; cancelling the pump aborts the request in the engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable

from tokenfactory.engine.errors import EngineClosedError, EngineStepError
from tokenfactory.engine.outputs import RequestOutput
from tokenfactory.fleet.messages import ChannelBatch, ReplicaError


class Outbox:
    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._outputs: list[RequestOutput] = []
        self._ended: dict[str, ReplicaError | None] = {}
        self._ready = asyncio.Event()
        self._pumps: dict[str, asyncio.Task[None]] = {}

    @property
    def open_requests(self) -> int:
        return len(self._pumps)

    def follow(self, request_id: str, stream: AsyncIterator[RequestOutput]) -> None:
        """Feed a request's engine stream into the outbox until it ends."""
        self._pumps[request_id] = asyncio.ensure_future(self._pump(request_id, stream))

    async def _pump(self, request_id: str, stream: AsyncIterator[RequestOutput]) -> None:
        error: ReplicaError | None = None
        try:
            async for out in stream:
                self._outputs.append(out)
                self._ready.set()
        except (EngineStepError, EngineClosedError) as exc:
            error = ReplicaError.of(exc)
        except Exception as exc:  # the front must hear of it, or the stream would just stop
            error = ReplicaError("step", f"the replica failed this request: {exc!r}")
        finally:
            self._ended[request_id] = error
            self._pumps.pop(request_id, None)
            self._ready.set()

    def take(self) -> ChannelBatch | None:
        """Everything gathered since the last take, or None when there is nothing."""
        if not self._outputs and not self._ended:
            return None
        batch = ChannelBatch(self._outputs, self._ended, self._clock())
        self._outputs, self._ended = [], {}
        return batch

    async def next_batch(self) -> ChannelBatch:
        """Wait for something to send, then take it all. The pumps woken by one engine step
        all run before this wakes, so a step's deltas leave together."""
        while True:
            batch = self.take()
            if batch is not None:
                return batch
            self._ready.clear()
            await self._ready.wait()

    async def close(self) -> None:
        """The front is gone: abort every request still running for it."""
        pumps = list(self._pumps.values())
        for task in pumps:
            task.cancel()
        for task in pumps:
            with contextlib.suppress(asyncio.CancelledError):
                await task
