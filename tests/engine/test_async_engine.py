"""AsyncEngine: concurrent streams from an event loop, aborts by leaving the stream, shutdown."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from tests.engine.engine_fixtures import assert_no_leaks, prompts, tiny_engine
from tokenfactory.engine.async_engine import AsyncEngine
from tokenfactory.engine.engine import Engine
from tokenfactory.engine.errors import (
    EngineClosedError,
    EngineDeadError,
    EngineStepError,
    InvalidRequestError,
)
from tokenfactory.engine.health import EngineHealth, EngineState
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


def test_an_abort_ends_its_stream_while_the_engine_is_busy():
    """A shutdown aborts in-flight requests shortly before its grace period ends: their streams
    must end then, not after whatever step the engine thread is in the middle of."""
    aengine = AsyncEngine(tiny_engine())
    long = SamplingParams(temperature=0.0, max_tokens=500, ignore_eos=True)
    busy = threading.Event()
    release = threading.Event()

    def hold(engine: Engine) -> None:  # stands for a long step on the engine thread
        busy.set()
        release.wait(10)

    try:

        async def main() -> float:
            rid = await aengine.add_request(prompts(1)[0], long)
            stream = aengine.outputs(rid)
            await stream.__anext__()  # it is running
            worker = threading.Thread(target=aengine.call, args=(hold,))
            worker.start()
            await asyncio.to_thread(busy.wait, 10)
            started = time.monotonic()
            aengine.abort(rid)
            async for _ in stream:  # deltas made before the abort, then the end
                pass
            took = time.monotonic() - started
            release.set()
            await asyncio.to_thread(worker.join, 10)
            return took

        assert asyncio.run(main()) < 1.0  # the engine thread was held for up to 10 s
        for _ in range(100):  # the engine frees the request at its next turn
            if not aengine.engine.has_unfinished():
                break
            time.sleep(0.01)
        assert not aengine.engine.has_unfinished()
    finally:
        release.set()
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


# -- engine health: failed steps ----------------------------------------------------------------


class _Flaky:
    """Wraps `Engine.step`: the next `fail_next` calls raise, or every call once `always`."""

    def __init__(self, engine: Engine):
        self.step = engine.step
        self.fail_next = 0
        self.always = False
        self.calls = 0
        engine.step = self  # type: ignore[method-assign]

    def __call__(self):
        self.calls += 1
        if self.always or self.fail_next > 0:
            self.fail_next = max(0, self.fail_next - 1)
            raise RuntimeError("boom")
        return self.step()


def _join(aengine: AsyncEngine) -> None:
    """A dead engine's loop ends on its own: wait (bounded) for its thread."""
    aengine._thread.join(10)
    assert not aengine._thread.is_alive()


def test_one_failed_step_ends_its_requests_and_the_engine_keeps_serving():
    aengine = AsyncEngine(tiny_engine(), max_consecutive_failures=2)
    flaky = _Flaky(aengine.engine)
    try:

        async def main():
            flaky.fail_next = 1
            with pytest.raises(EngineStepError, match="boom"):
                await _collect(aengine, prompts(1)[0])
            assert aengine.health.consecutive_failures == 1
            ok = await _collect(aengine, prompts(1)[0])  # a success resets the run...
            flaky.fail_next = 1
            with pytest.raises(EngineStepError):
                await _collect(aengine, prompts(1)[0])  # ...so this one failure is not fatal
            return ok, await _collect(aengine, prompts(1)[0])

        first, second = asyncio.run(main())
        assert len(first) == len(second) == 16
        health = aengine.health
        assert health.state is EngineState.HEALTHY and aengine.is_running
        assert (health.consecutive_failures, health.failed_steps) == (0, 2)
        assert health.last_error == "RuntimeError: boom"
    finally:
        aengine.shutdown()
    assert_no_leaks(aengine.engine)


def test_consecutive_failed_steps_mark_the_engine_dead_and_new_work_fails_at_once():
    aengine = AsyncEngine(tiny_engine(), max_consecutive_failures=2)
    flaky = _Flaky(aengine.engine)
    flaky.always = True

    async def main():
        with pytest.raises(EngineStepError):
            await _collect(aengine, prompts(1)[0])
        # The second failure in a row kills it: every request in the engine ends with it.
        results = await asyncio.gather(
            *(_collect(aengine, p) for p in prompts(3, seed=5)), return_exceptions=True
        )
        assert all(isinstance(r, EngineDeadError) for r in results), results
        _join(aengine)
        calls = flaky.calls
        started = time.monotonic()
        with pytest.raises(EngineDeadError) as info:
            await asyncio.wait_for(_collect(aengine, prompts(1)[0]), 2.0)
        assert time.monotonic() - started < 1.0  # refused at once, not after a timeout
        assert flaky.calls == calls  # and never reached the engine
        return info.value

    err = asyncio.run(main())
    health = aengine.health
    assert health.is_dead and err.health == health
    assert health.reason == "2 consecutive engine steps failed"
    assert health.last_error == "RuntimeError: boom"
    assert health.failed_steps == 2 and health.dead_since is not None
    assert str(err) == "the engine is dead: 2 consecutive engine steps failed"
    assert not aengine.is_running
    with pytest.raises(EngineDeadError):
        aengine.call(lambda e: e.num_unfinished, timeout=2)
    aengine.abort("anything")  # a no-op, never an error
    aengine.shutdown()  # and shutting a dead engine down is too
    assert not aengine.engine.has_unfinished()
    assert_no_leaks(aengine.engine)


def test_a_dead_engine_ends_every_stream_mid_generation():
    aengine = AsyncEngine(tiny_engine(), max_consecutive_failures=1)
    flaky = _Flaky(aengine.engine)
    long = SamplingParams(temperature=0.0, max_tokens=400, ignore_eos=True)
    ps = prompts(4, seed=3)

    async def main():
        started = [asyncio.Event() for _ in ps]

        async def one(i: int) -> tuple[int, BaseException | None]:
            n = 0
            try:
                async for out in aengine.generate(ps[i], long):
                    n += len(out.token_ids)
                    assert not out.finished
                    if n >= 2:
                        started[i].set()
            except EngineDeadError as exc:
                return n, exc
            return n, None

        tasks = [asyncio.ensure_future(one(i)) for i in range(len(ps))]
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in started)), 60)
        flaky.always = True
        return await asyncio.wait_for(asyncio.gather(*tasks), 60)

    results = asyncio.run(main())
    assert all(n >= 2 and isinstance(exc, EngineDeadError) for n, exc in results), results
    _join(aengine)
    assert aengine.health.reason == "an engine step failed"
    assert not aengine.engine.has_unfinished()
    assert_no_leaks(aengine.engine)


def test_health_counts_failures_in_a_row_and_dead_is_final():
    h = EngineHealth()
    h = h.after_failure(ValueError("bad\nsecond line"), 3).after_failure(ValueError("x"), 3)
    assert not h.is_dead and h.consecutive_failures == 2
    h = h.after_success()
    assert (h.consecutive_failures, h.failed_steps) == (0, 2)
    for _ in range(3):
        h = h.after_failure(OSError(), 3)
    assert h.is_dead and h.failed_steps == 5 and h.last_error == "OSError"
    assert h.reason == "3 consecutive engine steps failed"
    assert h.after_success().is_dead and h.died("again").reason == h.reason


def test_a_dead_engine_ends_live_streams_even_when_another_listener_has_gone():
    aengine = AsyncEngine(tiny_engine(), max_consecutive_failures=1)
    flaky = _Flaky(aengine.engine)
    long = SamplingParams(temperature=0.0, max_tokens=400, ignore_eos=True)
    # A request whose event loop is gone (its caller finished without reading it).
    asyncio.run(aengine.add_request(prompts(1)[0], long))

    async def main():
        got = 0
        with pytest.raises(EngineDeadError):
            async for out in aengine.generate(prompts(1, seed=9)[0], long):
                got += len(out.token_ids)
                flaky.always = True
        return got

    assert asyncio.run(asyncio.wait_for(main(), 60)) >= 1
    _join(aengine)
    assert not aengine.engine.has_unfinished()
    assert_no_leaks(aengine.engine)


def test_dead_health_tells_operators_and_clients_whether_it_comes_back_by_itself():
    alone = EngineHealth().died("an engine step failed")
    assert alone.remedy == "Restart the server." and "server is restarted" in alone.until
    fleet = EngineHealth(restarts_itself=True).died("every engine replica is down")
    assert "restart on their own" in fleet.remedy and "replica is back" in fleet.until
    assert "Restart the server." not in fleet.remedy
