"""Every policy on the real engine: scheduling changes order and timing, never results."""

from __future__ import annotations

import functools
import time

import pytest

from tests.engine.engine_fixtures import assert_no_leaks, prompts, tiny_engine
from tokenfactory.engine.sampling_params import SamplingParams
from tokenfactory.tiers import ServiceTerms, load_tiers

TIERS = load_tiers(preset="cpu")


@functools.cache
def run(policy: str, num_kv_blocks: int) -> tuple[dict[str, list[int]], int]:
    engine = tiny_engine(policy=policy, num_kv_blocks=num_kv_blocks, max_num_batched_tokens=64)
    names = [None, *TIERS.names]
    for i, prompt in enumerate(prompts(8, seed=3)):
        tier = names[i % len(names)]
        terms = None
        if tier is not None:
            t = TIERS[tier]
            terms = ServiceTerms(
                tier=t.name, rank=t.rank, promise=t.promise, received_at=time.monotonic()
            )
        params = SamplingParams(temperature=0.0, max_tokens=8 + 2 * i, ignore_eos=True)
        engine.add_request(prompt, params, request_id=f"r{i}", terms=terms)
    tokens: dict[str, list[int]] = {f"r{i}": [] for i in range(8)}
    steps = 0
    while engine.has_unfinished():
        for out in engine.step():
            tokens[out.request_id] += out.token_ids
        steps += 1
        assert steps < 5000, "no progress"
        assert_no_leaks(engine)
    assert_no_leaks(engine)
    return tokens, engine.stats.total_preemptions


@pytest.mark.parametrize("policy", ["priority", "tier"])
@pytest.mark.parametrize("num_kv_blocks", [256, 12])  # plenty, and short enough to preempt
def test_policy_gives_the_same_greedy_tokens_as_fcfs(policy: str, num_kv_blocks: int):
    expected, _ = run("fcfs", num_kv_blocks)
    got, preemptions = run(policy, num_kv_blocks)
    assert got == expected
    if num_kv_blocks == 12:
        assert preemptions > 0


def test_use_policy_switches_between_loads_with_a_fresh_scheduler_and_cache():
    from tokenfactory.scheduling.step_model import StepCoefficients
    from tokenfactory.scheduling.tier.policy import TierPolicy

    engine = tiny_engine(max_num_batched_tokens=64)
    prior = StepCoefficients(0.005, 2e-5, 2e-5, 0.0)
    engine.set_step_prior(prior)  # fcfs has no step model: ignored, but kept for later
    params = SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True)
    prompt = prompts(1, seed=9, lo=40, hi=41)[0]
    first = engine.generate([prompt], params)[0]
    # Mid-load the policy stays: switching would strand the requests in flight.
    engine.add_request(prompt, params, request_id="busy")
    with pytest.raises(RuntimeError, match="no request is unfinished"):
        engine.use_policy("tier")
    assert engine.scheduler.policy.name == "fcfs"
    while engine.has_unfinished():
        engine.step()
    with pytest.raises(ValueError, match="unknown scheduling policy"):
        engine.use_policy("nope")
    engine.use_policy("tier")
    policy = engine.scheduler.policy
    assert isinstance(policy, TierPolicy) and engine.config.policy == "tier"
    assert policy.model.coefficients == prior  # the hardware's prior, not the CPU guess
    again = engine.generate([prompt], params)[0]
    assert again.token_ids == first.token_ids
    assert again.cached_tokens == 0  # the prefix cache started empty
    steps = engine.stats.recent()
    assert steps and all(0 < s.schedule_s <= s.duration_s for s in steps)
    assert engine.stats.total_schedule_s > 0
    assert_no_leaks(engine)
