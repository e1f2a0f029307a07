"""Engine behaviour on a tiny random model: batching, caching, chunking and preemption never
change greedy output; aborts and bad input leak nothing."""

from __future__ import annotations

import pytest

from tests.engine.engine_fixtures import assert_no_leaks, prompts, tiny_engine
from tokenfactory.engine.errors import ContextLengthExceededError, InvalidRequestError
from tokenfactory.engine.sampling_params import SamplingParams
from tokenfactory.engine.sequence import FinishReason

GREEDY = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)


def _alone(ps: list[list[int]], params: SamplingParams = GREEDY) -> list[list[int]]:
    engine = tiny_engine()
    out = [engine.generate([p], params)[0].token_ids for p in ps]
    assert_no_leaks(engine)
    return out


def test_batch_of_16_matches_each_request_alone():
    ps = prompts(16)
    engine = tiny_engine()
    together = [c.token_ids for c in engine.generate(ps, GREEDY)]
    assert together == _alone(ps)
    assert all(len(t) == 24 for t in together)
    assert_no_leaks(engine)


def test_prefix_cache_on_and_off_agree_and_cached_tokens_are_reported():
    shared = prompts(1, seed=3, lo=70, hi=71)[0]
    ps = [shared + tail for tail in prompts(6, seed=4, lo=3, hi=20)]
    cached = tiny_engine(enable_prefix_caching=True)
    first = cached.generate(ps[:1], GREEDY)
    rest = cached.generate(ps[1:], GREEDY)
    uncached = tiny_engine(enable_prefix_caching=False)
    plain = uncached.generate(ps, GREEDY)
    assert [c.token_ids for c in first + rest] == [c.token_ids for c in plain]
    assert first[0].cached_tokens == 0
    # 70 shared tokens = 4 full blocks of 16 served from the cache.
    assert all(c.cached_tokens == 64 for c in rest)
    assert all(c.cached_tokens == 0 for c in plain)
    assert_no_leaks(cached)
    assert_no_leaks(uncached)


def test_chunked_prefill_matches_whole_prefill():
    ps = prompts(6, seed=5, lo=40, hi=120)
    chunked = tiny_engine(max_num_batched_tokens=32)
    whole = tiny_engine(enable_chunked_prefill=False, max_num_batched_tokens=4096)
    a = [c.token_ids for c in chunked.generate(ps, GREEDY)]
    b = [c.token_ids for c in whole.generate(ps, GREEDY)]
    assert a == b
    steps = chunked.stats.recent()
    assert any(s.num_prefill_tokens and s.num_decode_tokens for s in steps), "no mixed step"
    assert max(s.num_prefill_tokens + s.num_decode_tokens for s in steps) <= 32


def test_forced_preemption_changes_nothing():
    ps = prompts(8, seed=6, lo=20, hi=50)
    params = SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True)
    tight = tiny_engine(num_kv_blocks=12)
    out = [c.token_ids for c in tight.generate(ps, params)]
    assert tight.stats.total_preemptions > 0, "the KV budget was meant to force preemption"
    assert out == _alone(ps, params)
    assert_no_leaks(tight)


def test_abort_at_any_moment_frees_everything():
    engine = tiny_engine(num_kv_blocks=20)
    ids = [engine.add_request(p, GREEDY) for p in prompts(10, seed=7)]
    engine.step()
    engine.step()
    assert engine.abort(ids[0])  # running
    assert engine.abort(ids[-1])  # still waiting
    assert not engine.abort("no-such-request")
    assert_no_leaks(engine)
    for rid in ids[1:-1]:
        engine.abort(rid)
    assert not engine.has_unfinished()
    assert engine.step() == []
    assert_no_leaks(engine)


def test_seeded_sampling_is_reproducible_alone_and_in_a_batch():
    p = prompts(1, seed=8)[0]
    params = SamplingParams(temperature=1.0, top_p=0.9, seed=1234, max_tokens=20, ignore_eos=True)
    alone = tiny_engine().generate([p], params)[0].token_ids
    others = SamplingParams(temperature=1.0, max_tokens=20, ignore_eos=True)
    engine = tiny_engine()
    batch = engine.generate([p, *prompts(5, seed=9)], [params] + [others] * 5)
    assert batch[0].token_ids == alone
    different = tiny_engine().generate([p], SamplingParams(
        temperature=1.0, top_p=0.9, seed=4321, max_tokens=20, ignore_eos=True))[0].token_ids
    assert different != alone


def test_eos_stop_token_and_max_tokens_finish_reasons():
    engine = tiny_engine()
    p = prompts(1, seed=10)[0]
    free = engine.generate([p], SamplingParams(temperature=0, max_tokens=8, ignore_eos=True))[0]
    assert free.finish_reason is FinishReason.LENGTH and len(free.token_ids) == 8
    stop_tok = free.token_ids[3]
    first = free.token_ids.index(stop_tok)
    stopped = engine.generate(
        [p], SamplingParams(temperature=0, max_tokens=8, stop_token_ids=[stop_tok])
    )[0]
    assert stopped.finish_reason is FinishReason.STOP
    assert stopped.stop_reason == stop_tok
    assert stopped.token_ids == free.token_ids[: first + 1]
    assert_no_leaks(engine)


def test_logprobs_are_returned_per_token():
    engine = tiny_engine()
    out = engine.generate(prompts(1)[0], SamplingParams(temperature=0, max_tokens=5, logprobs=3))[0]
    assert len(out.logprobs) == len(out.token_ids) == 5
    for tok, lp in zip(out.token_ids, out.logprobs, strict=True):
        assert lp.token_id == tok
        assert len(lp.top) == 3
        assert lp.top[0][0] == tok  # greedy picks the most likely token
        assert lp.logprob <= 0.0


@pytest.mark.parametrize(
    ("prompt", "params", "error", "param"),
    [
        ([], None, InvalidRequestError, "prompt"),
        ([1] * 2000, None, ContextLengthExceededError, "messages"),
        ([1, 2, 3], SamplingParams(max_tokens=1022), ContextLengthExceededError, "max_tokens"),
        ([1, 99999], None, InvalidRequestError, "prompt"),
        ([1, -1], None, InvalidRequestError, "prompt"),
        ("text needs a tokenizer", None, InvalidRequestError, "prompt"),
    ],
)
def test_bad_requests_are_refused_cleanly(prompt, params, error, param):
    engine = tiny_engine()
    with pytest.raises(error) as info:
        engine.add_request(prompt, params)
    assert info.value.param == param
    assert not engine.has_unfinished()
    assert_no_leaks(engine)


@pytest.mark.parametrize("field", ["max_tokens", "temperature", "top_p", "logprobs"])
def test_bad_sampling_params_name_the_field(field):
    bad = {"max_tokens": 0, "temperature": -1.0, "top_p": 0.0, "logprobs": 99}[field]
    with pytest.raises(InvalidRequestError) as info:
        SamplingParams(**{field: bad})
    assert info.value.param == field


def test_prompt_larger_than_the_whole_cache_is_refused():
    engine = tiny_engine(num_kv_blocks=4)  # 64 tokens
    with pytest.raises(ContextLengthExceededError):
        engine.add_request([1] * 100, GREEDY)
    assert_no_leaks(engine)


def test_step_statistics_are_recorded():
    engine = tiny_engine()
    engine.generate(prompts(4), GREEDY)
    steps = engine.stats.recent()
    assert steps and all(s.duration_s > 0 for s in steps)
    assert sum(s.num_decode_tokens for s in steps) + sum(
        s.num_prefill_tokens for s in steps
    ) == engine.stats.total_decode_tokens + engine.stats.total_prefill_tokens
    assert 0.0 <= max(s.kv_usage for s in steps) <= 1.0
