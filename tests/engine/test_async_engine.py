"""AsyncEngine: concurrent streams from an event loop, aborts by leaving the stream, shutdown."""

from __future__ import annotations

import asyncio
import threading

import pytest

from tests.engine.engine_fixtures import assert_no_leaks, prompts, tiny_engine
from tokenfactory.engine.async_engine import AsyncEngine
from tokenfactory.engine.errors import EngineClosedError, InvalidRequestError
from tokenfactory.engine.sampling_params import SamplingParams

GREEDY = SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True)


async def _collect(aengine: AsyncEngine, prompt: list[int]) -> list[int]:
    tokens: list[int] = []
    async for out in aengine.generate(prompt, GREEDY):
        tokens += out.token_ids
    return tokens


def test_concurrent_streams_match_offline_generation():
    ps = prompts(8, seed=11)
    expected = [c.token_ids for c in tiny_engine().generate(ps, GREEDY)]
    aengine = AsyncEngine(tiny_engine())
    try:

        async def main():
            return await asyncio.gather(*(_collect(aengine, p) for p in ps))

        got = asyncio.run(main())
    finally:
        aengine.shutdown()
    assert got == expected
    assert_no_leaks(aengine.engine)


def test_leaving_a_stream_early_aborts_the_request():
    aengine = AsyncEngine(tiny_engine())
    long = SamplingParams(temperature=0.0, max_tokens=500, ignore_eos=True)
    try:

        async def main():
            n = 0
            async for _out in aengine.generate(prompts(1)[0], long):
                n += 1
                if n == 3:
                    break
            # Give the loop thread a moment to apply the abort.
            for _ in range(100):
                if not aengine.engine.has_unfinished():
                    break
                await asyncio.sleep(0.01)
            return n

        assert asyncio.run(main()) == 3
        assert not aengine.engine.has_unfinished()
    finally:
        aengine.shutdown()
    assert_no_leaks(aengine.engine)


def test_bad_request_raises_at_submission():
    aengine = AsyncEngine(tiny_engine())
    try:

        async def main():
            async for _ in aengine.generate([], GREEDY):
                pass

        with pytest.raises(InvalidRequestError):
            asyncio.run(main())
    finally:
        aengine.shutdown()


def test_submission_from_other_threads():
    aengine = AsyncEngine(tiny_engine())
    results: dict[int, list[int]] = {}

    def worker(i: int) -> None:
        results[i] = asyncio.run(_collect(aengine, prompts(1, seed=20 + i)[0]))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    aengine.shutdown()
    assert sorted(results) == [0, 1, 2, 3]
    assert all(len(r) == 16 for r in results.values())


def test_shutdown_ends_open_streams_and_refuses_new_work():
    aengine = AsyncEngine(tiny_engine())
    long = SamplingParams(temperature=0.0, max_tokens=800, ignore_eos=True)

    async def main():
        got = 0
        async for _out in aengine.generate(prompts(1)[0], long):
            got += 1
            if got == 2:
                threading.Thread(target=aengine.shutdown).start()
        return got

    n = asyncio.run(main())
    assert 2 <= n < 800
    assert not aengine.is_running
    assert_no_leaks(aengine.engine)

    async def after():
        async for _ in aengine.generate(prompts(1)[0], GREEDY):
            pass

    with pytest.raises(EngineClosedError):
        asyncio.run(after())
