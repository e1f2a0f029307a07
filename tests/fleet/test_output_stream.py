"""One output stream per replica, without Ray or a model: the replica's outbox gathers every
request's deltas into one batch per read, and the front's inboxes sort them back out."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from tokenfactory.engine.errors import EngineStepError
from tokenfactory.engine.outputs import RequestOutput
from tokenfactory.fleet.inboxes import Ended, Inboxes, Lost
from tokenfactory.fleet.messages import ChannelBatch, ReplicaError
from tokenfactory.fleet.outbox import Outbox


def out(rid: str, token: int, finished: bool = False, at: float = 10.0) -> RequestOutput:
    return RequestOutput(rid, [token], "t", None, finished, None, None, 3, 0, 1, at, at, None, None)


class EngineStream:
    """Stands in for `AsyncEngine.outputs`: yields what it is fed, records being aborted."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[RequestOutput | BaseException | None] = asyncio.Queue()
        self.aborted = False

    async def run(self) -> AsyncIterator[RequestOutput]:
        try:
            while (item := await self.queue.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finished:
                    return
        except asyncio.CancelledError:
            self.aborted = True
            raise


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_one_step_of_several_requests_leaves_as_one_batch_in_order():
    async def scenario() -> ChannelBatch:
        box = Outbox(clock=lambda: 42.0)
        a, b = EngineStream(), EngineStream()
        box.follow("a", a.run())
        box.follow("b", b.run())
        assert box.take() is None
        waiting = asyncio.ensure_future(box.next_batch())
        # One engine step delivers to both streams in one callback.
        a.queue.put_nowait(out("a", 1))
        b.queue.put_nowait(out("b", 7))
        a.queue.put_nowait(out("a", 2, finished=True))
        return await waiting

    batch = asyncio.run(scenario())
    tokens = {rid: [o.token_ids[0] for o in batch.outputs if o.request_id == rid] for rid in "ab"}
    assert tokens == {"a": [1, 2], "b": [7]}  # all in one batch, each request in order
    assert batch.ended == {"a": None}  # a finished; b still runs
    assert batch.sent_at == 42.0


def test_a_failed_request_ends_with_its_error_and_any_other_failure_is_a_step_error():
    async def scenario() -> dict[str, ReplicaError | None]:
        box = Outbox()
        a, b = EngineStream(), EngineStream()
        box.follow("a", a.run())
        box.follow("b", b.run())
        a.queue.put_nowait(EngineStepError("a step failed"))
        b.queue.put_nowait(KeyError("bug"))
        await settle()
        batch = box.take()
        assert batch is not None and batch.outputs == []
        return batch.ended

    ended = asyncio.run(scenario())
    assert ended["a"] == ReplicaError("step", "a step failed")
    assert ended["b"] is not None and ended["b"].kind == "step" and "KeyError" in ended["b"].message


def test_closing_an_outbox_aborts_the_requests_still_running():
    async def scenario() -> tuple[EngineStream, EngineStream, Outbox]:
        box = Outbox()
        done, running = EngineStream(), EngineStream()
        box.follow("done", done.run())
        box.follow("running", running.run())
        done.queue.put_nowait(out("done", 1, finished=True))
        await settle()
        assert box.open_requests == 1
        await box.close()
        return done, running, box

    done, running, box = asyncio.run(scenario())
    assert running.aborted and not done.aborted
    assert box.open_requests == 0


def test_inboxes_sort_a_batch_to_its_requests_with_times_on_the_fronts_clock():
    async def scenario() -> None:
        inboxes = Inboxes()
        a, b = inboxes.open("a"), inboxes.open("b")
        batch = ChannelBatch(
            [out("a", 1, at=10.0), out("gone", 5), out("b", 2), out("a", 3, finished=True)],
            {"a": None, "gone": None},
            sent_at=100.0,
        )
        inboxes.deliver(batch, now=105.0)
        got_a = [a.get_nowait() for _ in range(3)]
        assert [x.token_ids for x in got_a[:2]] == [[1], [3]]  # type: ignore[union-attr]
        assert got_a[0].arrival_time == 15.0  # type: ignore[union-attr]
        assert got_a[2] == Ended(None)
        assert b.get_nowait().token_ids == [2]  # type: ignore[union-attr]
        assert len(inboxes) == 1  # a ended; b still open

    asyncio.run(scenario())


def test_a_broken_stream_tells_every_open_request_once_and_no_closed_one():
    async def scenario() -> None:
        inboxes = Inboxes()
        a, b = inboxes.open("a"), inboxes.open("b")
        inboxes.close("b")
        inboxes.lose_all("RayActorError")
        inboxes.lose_all("again")
        assert a.get_nowait() == Lost("RayActorError")
        assert a.empty() and b.empty()

    asyncio.run(scenario())


@pytest.mark.parametrize("error", [None, ReplicaError("invalid", "bad stop", "stop")])
def test_an_ended_request_gets_its_end_after_its_last_delta(error):
    async def scenario() -> list[object]:
        inboxes = Inboxes()
        q = inboxes.open("r")
        inboxes.deliver(ChannelBatch([out("r", 1)], {"r": error}, 0.0), now=0.0)
        return [q.get_nowait(), q.get_nowait()]

    first, last = asyncio.run(scenario())
    assert isinstance(first, RequestOutput) and last == Ended(error)
