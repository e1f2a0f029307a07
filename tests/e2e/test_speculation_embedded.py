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
