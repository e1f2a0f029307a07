"""Asynchronous scheduling on a tiny random model: planning a step before the last one's
tokens reach the host changes no token, logprob, finish reason or usage count, under
preemption, prefix-cache hits, chunked prompts, aborts and context-window limits; requests
whose next step needs their tokens on the host (penalties, grammars) are sampled once they are."""

from __future__ import annotations

import pytest

from tests.engine.engine_fixtures import TINY, assert_no_leaks, prompts, tiny_engine
from tokenfactory.engine.config import EngineConfig
from tokenfactory.engine.engine import PLACEHOLDER_TOKEN, Engine
from tokenfactory.engine.outputs import RequestOutput
from tokenfactory.engine.sampling_params import SamplingParams


def _mixed_params(n: int) -> list[SamplingParams]:
    """Greedy and seeded sampling, logprobs, EOS on and off, lengths 4 to 4 + 3n. (An
    unseeded row's noise depends on the rows sampled beside it, which the schedule decides.)"""
    out = []
    for i in range(n):
        out.append(
            SamplingParams(
                max_tokens=4 + 3 * i,
                temperature=0.0 if i % 3 else 0.8,
                seed=i,
                logprobs=2 if i % 4 == 0 else None,
                ignore_eos=i % 2 == 0,
            )
        )
    return out


def _run(engine: Engine, ps: list[list[int]], params: list[SamplingParams]) -> list:
    out = engine.generate(ps, params)
    assert_no_leaks(engine)
    return [
        (c.token_ids, c.finish_reason, [(lp.token_id, lp.logprob, lp.top) for lp in c.logprobs])
        for c in out
    ]


def _assert_same(a: list, b: list) -> None:
    """Tokens, finish reasons and top tokens exactly; logprob values to 1e-4: a logprob's
    normalising sum rounds with the rows sampled beside it, and recompute after preemption
    computes a token's logits in a prompt step."""
    assert [(t, f) for t, f, _ in a] == [(t, f) for t, f, _ in b]
    for (_, _, lps_a), (_, _, lps_b) in zip(a, b, strict=True):
        assert [(t, [i for i, _ in top]) for t, _, top in lps_a] == [
            (t, [i for i, _ in top]) for t, _, top in lps_b
        ]
        values_a = [v for _, lp, top in lps_a for v in (lp, *(x for _, x in top))]
        values_b = [v for _, lp, top in lps_b for v in (lp, *(x for _, x in top))]
        assert values_a == pytest.approx(values_b, abs=1e-4)


def _ran_ahead(engine: Engine) -> int:
    return sum(s.ran_ahead for s in engine.stats.recent())


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"max_num_batched_tokens": 48},  # prompts in chunks beside decodes
        {"num_kv_blocks": 14, "max_num_batched_tokens": 64},  # preemption by recompute
        {"static_decode": True},  # the decode graphs' static buffers (eager on CPU)
    ],
)
def test_async_scheduling_changes_no_output(overrides):
    ps = prompts(12, seed=3)
    params = _mixed_params(12)
    sync = tiny_engine(**overrides)
    ahead = tiny_engine(async_scheduling=True, **overrides)
    _assert_same(_run(ahead, ps, params), _run(sync, ps, params))
    assert _ran_ahead(ahead) > 20
    assert _ran_ahead(sync) == 0
    if "num_kv_blocks" in overrides:
        assert sum(s.num_preempted for s in ahead.stats.recent()) > 0


def test_prefix_cache_hits_match():
    shared = prompts(1, seed=3, lo=70, hi=71)[0]
    ps = [shared + tail for tail in prompts(6, seed=4, lo=3, hi=20)]
    greedy = SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True)
    results = []
    for mode in (False, True):
        engine = tiny_engine(async_scheduling=mode)
        first = engine.generate(ps[:1], greedy)
        rest = engine.generate(ps[1:], greedy)
        assert all(c.cached_tokens == 64 for c in rest)
        assert_no_leaks(engine)
        results.append([c.token_ids for c in first + rest])
    assert results[0] == results[1]


def _drive(engine: Engine, ps, params) -> dict[str, list[RequestOutput]]:
    ids = [engine.add_request(p, sp) for p, sp in zip(ps, params, strict=True)]
    outs: dict[str, list[RequestOutput]] = {rid: [] for rid in ids}
    while engine.has_unfinished():
        for out in engine.step():
            outs[out.request_id].append(out)
    return outs


def test_deltas_come_one_call_later_with_exact_usage():
    ps = prompts(3, seed=7)
    params = [SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)] * 3
    engine = tiny_engine(async_scheduling=True)
    ids = [engine.add_request(p, sp) for p, sp in zip(ps, params, strict=True)]
    assert engine.step() == []  # the prompts' step is in flight: its tokens are not out yet
    first = engine.step()
    assert sorted(o.request_id for o in first) == sorted(ids)
    assert all(len(o.token_ids) == 1 and o.completion_tokens == 1 for o in first)
    sync = _drive(tiny_engine(), ps, params)
    # Every delta's count is what was delivered so far, never a token still in flight.
    ahead = tiny_engine(async_scheduling=True)
    for rid, deltas in _drive(ahead, ps, params).items():
        counts = [d.completion_tokens for d in deltas]
        assert counts == list(range(1, 7))
        assert [t for d in deltas for t in d.token_ids] == [
            t for d in sync[rid] for t in d.token_ids
        ]
        assert PLACEHOLDER_TOKEN not in [t for d in deltas for t in d.token_ids]
    assert_no_leaks(ahead)


def test_abort_while_a_step_is_in_flight():
    ps = prompts(4, seed=8)
    params = [SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True)] * 4
    engine = tiny_engine(async_scheduling=True)
    ids = [engine.add_request(p, sp) for p, sp in zip(ps, params, strict=True)]
    got: dict[str, list[int]] = {rid: [] for rid in ids}
    for _ in range(4):
        for out in engine.step():
            got[out.request_id] += out.token_ids
    assert engine._in_flight is not None  # the case under test: a step holds its tokens
    assert engine.abort(ids[1])
    while engine.has_unfinished():
        for out in engine.step():
            assert out.request_id != ids[1]
            got[out.request_id] += out.token_ids
    assert_no_leaks(engine)
    sync = tiny_engine().generate([ps[i] for i in (0, 2, 3)], params[:3])
    assert [got[ids[i]] for i in (0, 2, 3)] == [c.token_ids for c in sync]
    assert 0 < len(got[ids[1]]) < 16


def test_requests_that_fill_the_context_window_stop_at_its_end():
    cfg = {"max_model_len": 40}
    ps = prompts(5, seed=9, lo=20, hi=36)
    # No max_tokens: each runs until the window is full.
    params = [SamplingParams(temperature=0.0, max_tokens=None, ignore_eos=True)] * 5
    engines = tiny_engine(**cfg), tiny_engine(async_scheduling=True, **cfg)
    sync, ahead = (_run(e, ps, params) for e in engines)
    _assert_same(ahead, sync)
    assert all(len(p) + len(t[0]) == 40 for p, t in zip(ps, ahead, strict=True))
    # A request whose last token is in flight is not stepped again: no row is wasted on it.
    computed = [
        sum(s.num_decode_tokens + s.num_prefill_tokens for s in e.stats.recent()) for e in engines
    ]
    assert computed[0] == computed[1]


def test_penalties_see_every_token_so_far():
    """A step's sampling waits for the step in flight to reach the host, so penalties count
    its token, and the steps still run ahead."""
    ps = prompts(8, seed=10)
    # Strong enough that leaving out the newest token changes what comes next.
    params = [
        SamplingParams(temperature=0.0, max_tokens=40, repetition_penalty=2.0, ignore_eos=True),
        SamplingParams(
            temperature=0.9,
            seed=4,
            max_tokens=40,
            frequency_penalty=2.0,
            presence_penalty=2.0,
            ignore_eos=True,
        ),
    ] * 4
    sync = tiny_engine()
    ahead = tiny_engine(async_scheduling=True)
    _assert_same(_run(ahead, ps, params), _run(sync, ps, params))
    assert _ran_ahead(ahead) > 10


def test_grammar_masks_see_every_token_so_far():
    """Constrained requests beside plain ones: each step's masks are made once the step in
    flight has advanced their grammars, and the outputs are those of steps one at a time."""
    from tests.engine.test_constraints_engine import _check, constrained, engine

    ps = prompts(6, seed=12)
    params = [
        constrained(),
        SamplingParams(temperature=0.0, max_tokens=30, ignore_eos=True),
        constrained(temperature=1.0, seed=3),
    ] * 2
    sync = engine()
    ahead = engine(async_scheduling=True)
    a, b = sync.generate(ps, params), ahead.generate(ps, params)
    assert [(c.token_ids, c.finish_reason) for c in b] == [
        (c.token_ids, c.finish_reason) for c in a
    ]
    for out, sp in zip(b, params, strict=True):
        if sp.grammar is not None:
            _check(out.text)
    assert _ran_ahead(ahead) > 10
    assert_no_leaks(ahead)


def test_async_scheduling_does_not_combine_with_speculation():
    with pytest.raises(ValueError, match="speculation"):
        EngineConfig(async_scheduling=True, speculation="ngram")


def test_vocabulary_has_no_placeholder_id():
    assert not 0 <= PLACEHOLDER_TOKEN < TINY.vocab_size
