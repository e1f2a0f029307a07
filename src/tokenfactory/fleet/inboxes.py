"""The front's end of one replica's output stream: a queue per request, fed batch by batch.

A queue receives the request's `RequestOutput`s (times moved onto the front's clock), then
`Ended` when the replica's stream of it ended (finished, aborted, or failed), or `Lost` when
the replica's whole stream broke first.
"""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass

from tokenfactory.engine.outputs import RequestOutput
from tokenfactory.fleet.messages import ChannelBatch, ReplicaError


@dataclass(frozen=True)
class Ended:
    error: ReplicaError | None  # None: it finished or was aborted


@dataclass(frozen=True)
class Lost:
    reason: str  # why the replica's stream broke, for the request's error


InboxItem = RequestOutput | Ended | Lost


class Inboxes:
    def __init__(self) -> None:
        self._queues: dict[str, asyncio.Queue[InboxItem]] = {}

    def __len__(self) -> int:
        return len(self._queues)

    def open(self, request_id: str) -> asyncio.Queue[InboxItem]:
        queue: asyncio.Queue[InboxItem] = asyncio.Queue()
        self._queues[request_id] = queue
        return queue

    def close(self, request_id: str) -> None:
        self._queues.pop(request_id, None)

    def deliver(self, batch: ChannelBatch, now: float) -> None:
        """Hand each delta to its request (one whose front side is gone is dropped), then end
        the requests the replica ended."""
        shift = now - batch.sent_at
        for out in batch.outputs:
            queue = self._queues.get(out.request_id)
            if queue is not None:
                queue.put_nowait(shifted(out, shift))
        for request_id, error in batch.ended.items():
            queue = self._queues.pop(request_id, None)
            if queue is not None:
                queue.put_nowait(Ended(error))

    def lose_all(self, reason: str) -> None:
        """The stream broke: every request still open hears it once."""
        queues, self._queues = self._queues, {}
        for queue in queues.values():
            queue.put_nowait(Lost(reason))


def shifted(out: RequestOutput, shift: float) -> RequestOutput:
    """The output with its times on this process's clock (a replica's may differ)."""

    def move(t: float | None) -> float | None:
        return None if t is None else t + shift

    return dataclasses.replace(
        out,
        arrival_time=out.arrival_time + shift,
        first_token_time=move(out.first_token_time),
        finished_time=move(out.finished_time),
        first_scheduled_time=move(out.first_scheduled_time),
    )
