"""A replica's two halves with the real embedded model and no Ray: requests queued with
`submit` come back through the front's one read (`subscribe`), a newer read takes over
from a broken one, and a front that stops reading has its requests aborted."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator

import pytest

from tokenfactory.engine.config import EngineConfig
from tokenfactory.engine.sampling_params import SamplingParams
from tokenfactory.fleet.messages import ChannelBatch
from tokenfactory.fleet.replica import EngineReplica, ReplicaSpec

pytestmark = pytest.mark.e2e

PROMPT = list(range(1000, 1040))


@pytest.fixture(scope="module")
def replica():
    r = EngineReplica(ReplicaSpec(None, EngineConfig(num_threads=1), max_step_failures=3))
    yield r
    r.shutdown()


async def read(stream: AsyncGenerator[ChannelBatch, None], into: list[ChannelBatch], until: str):
    """What Ray does with a streaming call: drive it in a task of its own."""
    async for batch in stream:
        into.append(batch)
        if until in batch.ended:
            return


def test_a_newer_read_takes_over_and_gets_every_delta(replica):
    async def scenario() -> tuple[bool, list[ChannelBatch]]:
        old: list[ChannelBatch] = []
        new: list[ChannelBatch] = []
        broken = asyncio.ensure_future(read(replica.subscribe("front"), old, "r1"))
        await asyncio.sleep(0.01)
        taking_over = asyncio.ensure_future(read(replica.subscribe("front"), new, "r1"))
        await asyncio.sleep(0.01)
        params = SamplingParams(max_tokens=6, temperature=0, ignore_eos=True)
        assert await replica.submit("front", PROMPT, params, "r1", None) is None
        await asyncio.wait_for(taking_over, 60)
        with contextlib.suppress(asyncio.CancelledError):
            await broken
        return broken.cancelled() and not old, new

    old_ended, new = asyncio.run(scenario())
    assert old_ended
    outputs = [o for b in new for o in b.outputs]
    assert sum(len(o.token_ids) for o in outputs) == 6
    assert outputs[-1].finished and new[-1].ended == {"r1": None}


def test_a_refused_request_comes_back_as_the_error_that_refused_it(replica):
    params = SamplingParams(max_tokens=10**6)
    refusal = asyncio.run(replica.submit("front", PROMPT * 1000, params, "too-long", None))
    assert refusal is not None and refusal.kind == "context_length"


def test_a_front_that_stops_reading_has_its_requests_aborted(replica):
    async def scenario() -> int:
        got: list[ChannelBatch] = []
        reading = asyncio.ensure_future(read(replica.subscribe("gone"), got, "never"))
        params = SamplingParams(max_tokens=500, temperature=0, ignore_eos=True)
        assert await replica.submit("gone", PROMPT, params, "long", None) is None
        while not any(b.outputs for b in got):  # it is running
            await asyncio.sleep(0.01)
        reading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reading
        for _ in range(500):
            e = replica.engine.scheduler
            if e.num_running == 0 and e.num_waiting == 0:
                return sum(len(o.token_ids) for b in got for o in b.outputs)
            await asyncio.sleep(0.01)
        raise AssertionError("the request still runs with nobody reading it")

    assert asyncio.run(scenario()) < 500
