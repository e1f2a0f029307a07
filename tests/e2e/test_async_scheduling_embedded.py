"""Asynchronous scheduling on the embedded model (real tokenizer, kernels and stop rules):
the same text, tokens and finish reasons as steps run one at a time, with stop strings, EOS,
requests arriving while others decode, and streaming through the AsyncEngine."""

from __future__ import annotations

import asyncio

import pytest

from tokenfactory.bench.spec_workloads import load_workload
from tokenfactory.engine.async_engine import AsyncEngine
from tokenfactory.engine.engine import Engine
from tokenfactory.engine.sampling_params import SamplingParams

pytestmark = pytest.mark.slow


def _params() -> list[SamplingParams]:
    return [
        SamplingParams(temperature=0.0, max_tokens=48),  # EOS ends some
        SamplingParams(temperature=0.0, max_tokens=40, stop=["."]),
        SamplingParams(temperature=0.7, seed=5, max_tokens=32, logprobs=1),
        SamplingParams(temperature=0.0, max_tokens=24, stop=["\n\n", " the "]),
    ]


def _run_staggered(engine: Engine, prompts: list[str]) -> dict[int, tuple]:
    """Add a request every third step; return each one's text, tokens and finish reason."""
    params = _params()
    pending = list(enumerate(prompts))
    ids: dict[str, int] = {}
    got: dict[int, list] = {}
    step = 0
    while pending or engine.has_unfinished():
        if pending and step % 3 == 0:
            i, prompt = pending.pop(0)
            ids[engine.add_request(prompt, params[i % len(params)])] = i
            got[i] = ["", [], None]
        for out in engine.step():
            entry = got[ids[out.request_id]]
            entry[0] += out.text
            entry[1] += out.token_ids
            if out.finished:
                entry[2] = (out.finish_reason, out.stop_reason, out.completion_tokens)
        step += 1
    return {i: tuple(v[:2]) + tuple(v[2]) for i, v in got.items()}


def test_same_text_as_steps_one_at_a_time(make_engine):
    sync = make_engine()
    ahead = make_engine(async_scheduling=True)
    prompts = [sync.chat_prompt(w.messages) for w in load_workload("chat")[:8]]
    a = _run_staggered(sync, prompts)
    b = _run_staggered(ahead, prompts)
    assert b == a
    reasons = {v[2] for v in a.values()}
    assert "stop" in reasons and "length" in reasons
    assert all(len(v[1]) == v[4] for v in b.values())  # usage counts what was delivered
    assert not ahead.has_unfinished()
    assert sum(s.ran_ahead for s in ahead.stats.recent()) > 50


def test_streams_through_the_async_engine(make_engine):
    ahead = make_engine(async_scheduling=True)
    prompt = ahead.chat_prompt([{"role": "user", "content": "Name three colours."}])
    want = make_engine().generate(prompt, SamplingParams(temperature=0.0, max_tokens=32))[0]

    async def main() -> list:
        engine = AsyncEngine(ahead)
        try:
            deltas = []
            params = SamplingParams(temperature=0.0, max_tokens=32)
            async for out in engine.generate(prompt, params):
                deltas.append(out)
            return deltas
        finally:
            engine.shutdown()

    deltas = asyncio.run(main())
    assert "".join(d.text for d in deltas) == want.text
    assert [t for d in deltas for t in d.token_ids] == want.token_ids
    assert deltas[-1].finished and deltas[-1].completion_tokens == len(want.token_ids)
