"""Speculative decoding: output identical to plain decoding, KV and prefix cache exact."""

from __future__ import annotations

import pytest

from tokenfactory.engine.sampling_params import SamplingParams
from tokenfactory.engine.sequence import Sequence
from tokenfactory.engine.speculation.draft_model import DraftModelProposer
from tokenfactory.engine.speculation.ngram import NgramProposer, lookup
from tokenfactory.engine.speculation.proposer import DraftRequest
from tokenfactory.engine.speculation.verify import accepted_length

from .engine_fixtures import TINY, assert_no_leaks, prompts, tiny_engine
from .speculation_fixtures import ScriptedProposer, speculate


def test_lookup_finds_latest_longest_match():
    tokens = [1, 2, 3, 9, 1, 2, 3, 7, 8, 5, 1, 2, 3]
    # "1 2 3" occurred twice before; the latest is followed by 7 8 5.
    assert lookup(tokens, 3, max_n=3, min_n=1) == [7, 8, 5]
    assert lookup(tokens, 10, max_n=3, min_n=1) == [7, 8, 5, 1, 2, 3]
    assert lookup([4, 5, 6], 3, max_n=3, min_n=1) == []
    assert lookup([1, 2, 1], 2, max_n=2, min_n=2) == []  # "2 1" never occurred before
    assert lookup([1, 2, 1], 2, max_n=2, min_n=1) == [2, 1]


def test_the_proposers_index_answers_as_the_stateless_lookup():
    import random

    rng = random.Random(3)
    tokens = [rng.randrange(1, 12) for _ in range(300)]
    proposer = NgramProposer(max_n=4, min_n=2)
    seq = Sequence("r", tokens[:20], SamplingParams())
    for end in range(20, 300, 7):  # the request grows by a few tokens per step
        seq.output_token_ids = tokens[20:end]
        got = proposer.propose([DraftRequest(seq, 5)]).get("r", [])
        assert got == lookup(tokens[:end], 5, 4, 2), end
    proposer.retain([])
    assert not proposer._indexes


def test_accepted_length():
    assert accepted_length([5, 6, 7], [5, 6]) == 2
    assert accepted_length([5, 9, 7], [5, 6]) == 1
    assert accepted_length([4, 6, 7], [5, 6]) == 0


def _reference(params: SamplingParams, batch: list[list[int]], **engine_args):
    engine = tiny_engine(**engine_args)
    out = engine.generate(batch, params)
    return engine, out


def _check_same(reference, got):
    for ref, out in zip(reference, got, strict=True):
        assert out.token_ids == ref.token_ids
        assert out.finish_reason == ref.finish_reason
        assert out.prompt_tokens == ref.prompt_tokens


@pytest.mark.parametrize("depth", [1, 3, 8])
@pytest.mark.parametrize("batch_size", [1, 5])
def test_greedy_identical_with_scripted_drafts(depth, batch_size):
    params = SamplingParams(temperature=0.0, max_tokens=40)
    batch = prompts(batch_size, seed=depth)
    _, ref = _reference(params, batch)
    answers = {tuple(p): r.token_ids for p, r in zip(batch, ref, strict=True)}
    proposer = ScriptedProposer(answers)
    engine = speculate(tiny_engine(), depth)
    engine.proposer = proposer
    got = engine.generate(batch, params)
    _check_same(ref, got)
    steps = engine.stats.recent()
    drafted = sum(s.num_draft_tokens for s in steps)
    accepted = sum(s.num_accepted_tokens for s in steps)
    assert 0 < accepted < drafted  # both paths ran
    assert len(steps) < sum(len(r.token_ids) for r in ref) + len(batch)
    assert_no_leaks(engine)


def test_greedy_identical_with_ngram_drafts_on_repetitive_prompts():
    # Prompts that repeat themselves: the tiny model's output echoes them often enough.
    base = prompts(6, seed=3, lo=8, hi=20)
    batch = [p * 4 for p in base]
    params = SamplingParams(temperature=0.0, max_tokens=48)
    _, ref = _reference(params, batch)
    engine = speculate(tiny_engine(), 4)
    engine.proposer = NgramProposer(max_n=3, min_n=1)
    _check_same(ref, engine.generate(batch, params))
    assert sum(s.num_draft_tokens for s in engine.stats.recent()) > 0
    assert_no_leaks(engine)


def test_draft_model_proposer_exact_with_good_and_bad_drafts():
    batch = prompts(4, seed=7)
    params = SamplingParams(temperature=0.0, max_tokens=30)
    _, ref = _reference(params, batch)
    for seed, expect_high in ((1, True), (99, False)):
        engine = tiny_engine()
        draft_engine = tiny_engine()
        draft_engine.model.init_random_weights(seed=seed, std=0.3)
        proposer = DraftModelProposer(
            draft_engine.model, engine.config, engine.num_kv_blocks, TINY.vocab_size
        )
        engine.proposer = proposer
        speculate(engine, 4)
        _check_same(ref, engine.generate(batch, params))
        steps = engine.stats.recent()
        rate = sum(s.num_accepted_tokens for s in steps) / sum(s.num_draft_tokens for s in steps)
        # Seed 1 is the target's own weights: every draft token is accepted.
        assert (rate == 1.0) if expect_high else (rate < 0.5)
        assert_no_leaks(engine)
        engine.proposer.retain([])
        proposer.blocks.check_invariants([])


def test_exact_under_preemption_and_prefix_cache_hits():
    # A cache so small that sequences preempt each other, and prompts sharing prefixes.
    shared = prompts(1, seed=11, lo=40, hi=41)[0]
    batch = [shared + p for p in prompts(6, seed=12, lo=3, hi=20)]
    params = SamplingParams(temperature=0.0, max_tokens=60)
    _, ref = _reference(params, batch, num_kv_blocks=24)
    answers = {tuple(p): r.token_ids for p, r in zip(batch, ref, strict=True)}
    engine = speculate(tiny_engine(num_kv_blocks=24), 4)
    engine.proposer = ScriptedProposer(answers, wrong_every=4)
    ids = [engine.add_request(p, params) for p in batch]
    outs: dict[str, list[int]] = {i: [] for i in ids}
    preempted = 0
    while engine.has_unfinished():
        for o in engine.step():
            outs[o.request_id] += o.token_ids
        preempted += engine.stats.recent()[-1].num_preempted
        assert_no_leaks(engine)
    assert preempted > 0
    assert [outs[i] for i in ids] == [r.token_ids for r in ref]
    assert engine.block_manager.prefix_cache_hit_tokens > 0
    # What the cache holds is exact: the same prompts again, served from it, agree.
    again = engine.generate(batch, params)
    _check_same(ref, again)


def test_stops_lengths_logprobs_and_penalties_with_several_tokens_per_step():
    batch = prompts(4, seed=21)
    _, plain = _reference(SamplingParams(temperature=0.0, max_tokens=40), batch)
    # Stop on a token the plain run produces mid-way, so a draft reaches past it.
    stop_id = plain[0].token_ids[10]
    cases = [
        SamplingParams(temperature=0.0, max_tokens=7),
        SamplingParams(temperature=0.0, max_tokens=40, stop_token_ids=[stop_id]),
        SamplingParams(temperature=0.0, max_tokens=25, logprobs=3),
        SamplingParams(temperature=0.0, max_tokens=25, repetition_penalty=1.3,
                       frequency_penalty=0.5, presence_penalty=0.4),
        SamplingParams(temperature=0.8, top_p=0.9, seed=5, max_tokens=25),
        SamplingParams(temperature=1.0, top_k=20, seed=6, max_tokens=25, logprobs=2,
                       frequency_penalty=0.3),
    ]
    for params in cases:
        _, ref = _reference(params, batch)
        answers = {tuple(p): r.token_ids for p, r in zip(batch, ref, strict=True)}
        engine = speculate(tiny_engine(), 5)
        engine.proposer = ScriptedProposer(answers)
        got = engine.generate(batch, params)
        _check_same(ref, got)
        for r, g in zip(ref, got, strict=True):
            assert g.stop_reason == r.stop_reason
            if params.logprobs:
                assert len(g.logprobs) == len(r.logprobs) == len(r.token_ids)
                for a, b in zip(g.logprobs, r.logprobs, strict=True):
                    assert a.token_id == b.token_id
                    assert a.logprob == pytest.approx(b.logprob, abs=1e-4)
        assert sum(s.num_accepted_tokens for s in engine.stats.recent()) > 0
        assert_no_leaks(engine)


def test_usage_counts_exact_when_a_draft_reaches_past_max_tokens():
    batch = prompts(2, seed=31)
    params = SamplingParams(temperature=0.0, max_tokens=9)
    _, ref = _reference(SamplingParams(temperature=0.0, max_tokens=30), batch)
    answers = {tuple(p): r.token_ids for p, r in zip(batch, ref, strict=True)}
    engine = speculate(tiny_engine(), 8)
    engine.proposer = ScriptedProposer(answers, wrong_every=0)  # always right
    ids = [engine.add_request(p, params) for p in batch]
    seen = {i: 0 for i in ids}
    while engine.has_unfinished():
        for o in engine.step():
            seen[o.request_id] += len(o.token_ids)
            if o.finished:
                assert o.completion_tokens == 9 == seen[o.request_id]
    # Several tokens per step: far fewer steps than tokens.
    assert len(engine.stats.recent()) <= 2 + 2


def test_unseeded_sampling_follows_the_target_distribution():
    """Chi-square over the second and third tokens of many unseeded requests (the first
    comes from the prompt step; the next two from a step verifying a one-token draft that
    always guesses the same token), against the plain engine's own distribution."""
    import math
    from dataclasses import replace

    from tokenfactory.engine.config import EngineConfig
    from tokenfactory.engine.engine import Engine
    from tokenfactory.engine.model_setup import build_model

    small = replace(TINY, vocab_size=6, eos_token_ids=[])
    cfg = EngineConfig(dtype="float32", num_kv_blocks=512, block_size=16, seed=123)
    model = build_model(small, cfg, state_dict=None)
    model.init_random_weights(seed=4, std=0.15)  # soft logits: every token has some chance
    plain = Engine(model, None, cfg)
    prompt = [1, 2, 3, 4, 5]

    def dist(tokens: list[int]) -> dict[int, float]:
        out = plain.generate(tokens, SamplingParams(temperature=1.0, max_tokens=1, logprobs=6))
        return {t: math.exp(lp) for t, lp in out[0].logprobs[0].top}

    expected: dict[tuple[int, int], float] = {}
    for t1, p1 in dist(prompt).items():
        for t2, p2 in dist(prompt + [t1]).items():
            for t3, p3 in dist(prompt + [t1, t2]).items():
                expected[(t2, t3)] = expected.get((t2, t3), 0.0) + p1 * p2 * p3
    guess = max(range(6), key=lambda t: sum(p for k, p in expected.items() if k[0] == t))

    class FixedGuess:
        name = "fixed"

        def propose(self, requests):
            return {r.seq.request_id: [guess] for r in requests}

        def retain(self, live):
            pass

    spec = speculate(Engine(model, None, cfg, proposer=FixedGuess()), 1)
    n = 3000
    counts: dict[tuple[int, int], int] = {}
    params = SamplingParams(temperature=1.0, max_tokens=3)
    for _ in range(0, n, 500):
        for out in spec.generate([prompt] * 500, params):
            key = (out.token_ids[1], out.token_ids[2])
            counts[key] = counts.get(key, 0) + 1
    steps = spec.stats.recent()
    drafted = sum(s.num_draft_tokens for s in steps)
    assert drafted == n and 0 < sum(s.num_accepted_tokens for s in steps) < n
    chi2 = sum((counts.get(k, 0) - n * p) ** 2 / (n * p) for k, p in expected.items())
    assert sum(counts.values()) == n and set(counts) <= set(expected)
    # 35 degrees of freedom: the 99.9th percentile of chi-square is 66.6.
    assert chi2 < 66.6, (chi2, counts)


def test_a_verified_draft_runs_as_one_decode_row_per_position():
    from tokenfactory.engine.scheduler import ScheduledChunk, SchedulerOutput
    from tokenfactory.engine.sequence import Sequence
    from tokenfactory.engine.step_inputs import build_step_inputs

    params = SamplingParams()
    spec = Sequence("s", list(range(1, 21)), params)  # 20 tokens, the last not computed
    spec.block_table = [7, 8]
    plain = Sequence("d", list(range(1, 10)), params)
    plain.block_table = [3]
    prompt = Sequence("p", list(range(1, 40)), params)
    prompt.block_table = [4, 5, 6]
    chunks = [
        ScheduledChunk(plain, 8, 1),
        ScheduledChunk(prompt, 0, 39),
        ScheduledChunk(spec, 19, 1, draft_slots=3),
    ]
    out = SchedulerOutput(chunks, [], 39, 2)
    out.attach_drafts({"s": [91, 92, 93, 94]})  # one more than reserved: cut
    assert [c.seq.request_id for c in out.chunks] == ["d", "s", "p"]
    inputs = build_step_inputs(out, block_size=16)
    assert inputs.num_decodes == 5  # the plain decode and 4 verify rows, ahead of the prompt
    assert inputs.token_ids[:5].tolist() == [9, 20, 91, 92, 93]
    assert inputs.positions[:5].tolist() == [8, 19, 20, 21, 22]
    assert inputs.context_len[:5].tolist() == [9, 20, 21, 22, 23]
    assert inputs.block_tables[1].tolist()[:2] == [7, 8]
    assert inputs.sample_rows.tolist() == [0, 1, 2, 3, 4, 5 + 38]


def test_drafts_stay_within_the_rows_a_step_computes_exactly():
    batch = prompts(3, seed=41)
    params = SamplingParams(temperature=0.0, max_tokens=30)
    _, ref = _reference(params, batch)
    answers = {tuple(p): r.token_ids for p, r in zip(batch, ref, strict=True)}
    engine = speculate(tiny_engine(), 4)
    engine.proposer = ScriptedProposer(answers, wrong_every=0)
    engine.max_exact_rows = 5  # as if the CPU's decode kernels were row-exact to 5 rows
    _check_same(ref, engine.generate(batch, params))
    for s in engine.stats.recent():
        if s.num_prefill_tokens == 0:
            assert s.num_decode_tokens + s.num_draft_tokens <= 5
    assert max(s.num_draft_tokens for s in engine.stats.recent()) > 0
    assert_no_leaks(engine)


def test_an_acceptance_that_stopped_drafting_recovers():
    engine = speculate(tiny_engine(), 4)
    engine.scheduler.acceptance.observe(400, 0)
    low = engine.scheduler.acceptance.rate
    engine.generate(prompts(1, seed=5), SamplingParams(temperature=0.0, max_tokens=60))
    assert engine.scheduler.acceptance.rate > low


def test_no_drafts_beside_prompt_chunks_where_the_runner_mixes_their_rows():
    # Rows exact to 32 in decode-only steps, but this runner (the tiny float32 model) runs a
    # step with prompt tokens as one forward: drafts there would change how prompts round.
    batch = prompts(6, seed=47, lo=30, hi=60)
    params = SamplingParams(temperature=0.0, max_tokens=20)
    _, ref = _reference(params, batch, max_num_batched_tokens=64)
    answers = {tuple(p): r.token_ids for p, r in zip(batch, ref, strict=True)}
    engine = speculate(tiny_engine(max_num_batched_tokens=64), 4)
    engine.proposer = ScriptedProposer(answers, wrong_every=0)
    engine.max_exact_rows = 32
    _check_same(ref, engine.generate(batch, params))
    steps = engine.stats.recent()
    assert all(s.num_draft_tokens == 0 for s in steps if s.num_prefill_tokens)
    assert any(s.num_draft_tokens for s in steps)
    # Drafts come on top of the token budget: prompts are chunked as without them.
    assert [s.num_prefill_tokens for s in steps if s.num_prefill_tokens] == [
        s.num_prefill_tokens for s in _reference(params, batch, max_num_batched_tokens=64)[0]
        .stats.recent() if s.num_prefill_tokens
    ]


def test_verify_rows_run_through_the_static_decode_buffers():
    """Decodes and verified drafts only: a decode-only step, which the CUDA-graph runner (here
    its static buffers without capture) takes, with every row sampled."""
    batch = prompts(3, seed=51)
    params = SamplingParams(temperature=0.0, max_tokens=24)
    _, ref = _reference(params, batch)
    answers = {tuple(p): r.token_ids for p, r in zip(batch, ref, strict=True)}
    engine = speculate(tiny_engine(static_decode=True, attention_backend="torch"), 3)
    engine.proposer = ScriptedProposer(answers)
    graphs = engine.runner.graphs
    assert graphs is not None
    seen: list[int] = []
    run = graphs.run

    def counting(inputs, fill=None):
        seen.append(inputs.num_decodes)
        return run(inputs, fill)

    graphs.run = counting
    _check_same(ref, engine.generate(batch, params))
    assert max(seen) > len(batch)  # steps with verify rows went through it
    assert_no_leaks(engine)
