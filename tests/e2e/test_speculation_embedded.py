"""Speculative decoding on the embedded model: greedy output token for token the same as
without it, on chat and agent prompts (real kernels, real roundings)."""

from __future__ import annotations

import pytest

from tokenfactory.bench.spec_workloads import load_workload
from tokenfactory.engine.engine import Engine
from tokenfactory.engine.sampling_params import SamplingParams
from tokenfactory.engine.speculation.ngram import NgramProposer

pytestmark = pytest.mark.slow


def test_greedy_identical_with_prompt_lookup(make_engine):
    plain = make_engine()
    spec = Engine(plain.model, plain.tokenizer, plain.config, proposer=NgramProposer())
    spec.scheduler.max_draft_tokens = 4
    prompts = [load_workload("agent")[0], load_workload("agent")[1], load_workload("chat")[0]]
    params = SamplingParams(temperature=0.0, max_tokens=96)
    for p in prompts:
        text = plain.chat_prompt(p.messages)
        a = plain.generate(text, params)[0]
        b = spec.generate(text, params)[0]
        assert b.token_ids == a.token_ids, p.name
        assert b.text == a.text
    steps = spec.stats.recent()
    assert sum(s.num_accepted_tokens for s in steps) > 0


def test_drafts_beside_prompt_chunks_keep_greedy_output(make_engine):
    """Requests arriving while an agent answer speculates: their prompt chunks share its steps
    (its decodes and drafts run apart, as a decode-only step), and its text is still the
    plain engine's alone."""
    plain = make_engine()
    spec = Engine(plain.model, plain.tokenizer, plain.config, proposer=NgramProposer())
    spec.scheduler.max_draft_tokens = 4
    agent = plain.chat_prompt(load_workload("agent")[0].messages)
    params = SamplingParams(temperature=0.0, max_tokens=96)
    alone = plain.generate(agent, params)[0].token_ids
    rid = spec.add_request(agent, params)
    got: list[int] = []
    arrivals = [c.messages for c in load_workload("chat")[:6]]
    before = spec.stats.total_steps
    step = 0
    while spec.has_unfinished():
        if arrivals and step % 4 == 1:
            spec.add_request(spec.chat_prompt(arrivals.pop()), SamplingParams(max_tokens=2))
        got += [t for out in spec.step() if out.request_id == rid for t in out.token_ids]
        step += 1
    steps = spec.stats.recent(spec.stats.total_steps - before)
    assert got == alone
    beside = [s for s in steps if s.num_prefill_tokens and s.num_draft_tokens]
    assert len(beside) >= 3, [(s.num_prefill_tokens, s.num_draft_tokens) for s in steps]
