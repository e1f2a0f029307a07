"""The `tier` policy's pacing (`tier.running`, `tier.pacing`): which running requests step,
how long a step may be, and how prompt work gets its share of the steps."""

from __future__ import annotations

import math

import pytest

from tests.scheduling.tier_support import (
    COST,
    TIERS,
    Sim,
    context,
    fitted,
    running_plan,
    running_seq,
    terms,
)
from tokenfactory.engine.sampling_params import SamplingParams
from tokenfactory.engine.sequence import Sequence, SequenceStatus
from tokenfactory.scheduling.step_model import StepCoefficients, StepTimeModel
from tokenfactory.scheduling.step_stats import StepStats
from tokenfactory.scheduling.tier.config import TierPolicyConfig
from tokenfactory.scheduling.tier.pacing import target_step_s
from tokenfactory.scheduling.tier.policy import TierPolicy


def test_due_requests_are_always_carried_even_past_the_step_target():
    # Each step is far too slow for anyone's promise, so no fill happens: only the due go.
    slow = StepCoefficients(1.0, 1.0, 0.01, 0.0)
    policy = TierPolicy(step_model=fitted(slow))
    now = 10.0
    due = [
        running_seq(f"due{i}", "standard", outputs=4, first_token_time=now - 5) for i in range(5)
    ]
    ahead = [
        running_seq(f"ahead{i}", "standard", outputs=200, first_token_time=now) for i in range(5)
    ]
    carried = running_plan(policy, [*ahead, *due], now).order
    assert {s.request_id for s in carried} == {s.request_id for s in due}


def test_ahead_requests_fill_the_step_up_to_the_fastest_promise():
    policy = TierPolicy(step_model=fitted())
    now = 10.0
    sup = running_seq("super", "super", outputs=250, first_token_time=now - 10)  # due now
    free = [running_seq(f"f{i}", "free", outputs=100, first_token_time=now) for i in range(50)]
    carried = running_plan(policy, [*free, sup], now).order
    assert carried[0] is sup
    # Super is behind: steps may last `catch_up` of its token interval, so it gains.
    cfg = policy.config
    target = cfg.catch_up / (TIERS["super"].tokens_per_s * cfg.pace)
    kv = sum(s.num_tokens for s in carried)
    assert COST.predict(len(carried), 0, kv) <= target
    assert 1 < len(carried) < 51  # work-conserving, but bounded by the super step
    # Without a super request present, the free requests all fit in one (longer) step.
    assert len(running_plan(policy, free, now).order) == 50


def test_super_keeps_its_speed_while_50_free_requests_run():
    def scenario(policy: str) -> Sim:
        sim = Sim(policy)
        for i in range(50):
            sim.add(f"free{i}", "free", prompt_len=64, max_tokens=400)
        sim.run(until=2.0)
        sim.add("super", "super", prompt_len=64, max_tokens=100)
        sim.run(until=sim.now + 8.0)
        return sim

    tier = scenario("tier")
    promise = TIERS["super"]
    speed = tier.speed("super")
    assert speed is not None and speed >= promise.tokens_per_s
    assert tier.ttft("super") <= promise.ttft_s
    # The free requests keep moving, above their own promise.
    free_rates = [tier.seqs[f"free{i}"].num_output_tokens / tier.now for i in range(50)]
    assert min(free_rates) >= TIERS["free"].tokens_per_s
    # The same load under fcfs misses the super promise (so this test can fail).
    fcfs_speed = scenario("fcfs").speed("super")
    assert fcfs_speed is not None and fcfs_speed < promise.tokens_per_s


def test_free_work_absorbs_idle_capacity():
    def free_rate(policy: str) -> float:
        sim = Sim(policy)
        for i in range(8):
            sim.add(f"free{i}", "free", max_tokens=100)
        sim.run()
        return sum(100 / sim.now for _ in range(8))

    tier, fcfs = free_rate("tier"), free_rate("fcfs")
    # Promised 1 token/s each; with nobody paying for speed they run at full throughput.
    assert tier >= 0.95 * fcfs
    assert tier > 10 * 8 * TIERS["free"].tokens_per_s


def test_best_effort_never_starves_below_its_share():
    # Heavy paid load: 12 super requests make every step's time budget tight.
    share = 0.1
    policy = TierPolicy(TierPolicyConfig(min_share=share, max_utilization=10.0))
    sim = Sim(policy, cost=StepCoefficients(0.02, 0.004, 0.0001, 0.0))
    for i in range(12):
        sim.add(f"super{i}", "super", max_tokens=300)
    for i in range(4):
        sim.add(f"offline{i}", None, max_tokens=30)  # no terms: best effort
    sim.run(until=15.0)
    every = round(1 / share)
    for i in range(4):
        steps = sim.token_steps[f"offline{i}"]
        assert len(steps) >= 2
        gaps = [b - a for a, b in zip(steps, steps[1:], strict=False)]
        assert max(gaps) <= every


def test_steps_grow_when_everyone_is_ahead_and_shrink_for_a_pressed_promise():
    policy = TierPolicy(step_model=fitted())
    now = 10.0
    ctx = context(policy, now)
    # Far ahead of a 15 tokens/s schedule: the step may take most of the lead.
    ahead = running_seq("u", "ultra", outputs=10, first_token_time=now - 0.1)
    lead = ctx.due_at(ahead) - now
    assert target_step_s(ctx, [(ctx.due_at(ahead), ahead)]) == pytest.approx(min(lead, 0.25))
    # Behind schedule: at most `catch_up` of its token interval, so it gains every step.
    behind = running_seq("b", "ultra", outputs=100, first_token_time=now - 10)
    interval = 1 / (15 * policy.config.pace)
    decoding = [(ctx.due_at(r), r) for r in (ahead, behind)]
    assert target_step_s(ctx, decoding) == pytest.approx(policy.config.catch_up * interval)


def test_overloaded_steps_carry_the_dearest_due_work_first():
    # 30 due standard requests and one due super request cannot all ride a step short enough
    # for super: super rides every step, the cheaper ones fall behind (by value).
    policy = TierPolicy(step_model=fitted())
    now = 10.0
    sup = running_seq("super", "super", outputs=250, first_token_time=now - 10)
    std = [running_seq(f"s{i}", "standard", 50, now - 20) for i in range(30)]
    carried = running_plan(policy, [*std, sup], now).order
    assert sup in carried
    decodes = [s for s in carried if not s.is_prefill]
    assert len(decodes) < 31
    kv = sum(s.num_tokens for s in decodes)
    assert COST.predict(len(decodes), 0, kv) <= 1 / (25 * policy.config.pace)


def test_prompts_run_in_chunks_worth_the_prefill_step_cost():
    # A step with any prompt token pays 30 ms more; a prompt token costs 0.5 ms, so 60
    # tokens are as much work as the fixed cost. A paced ultra request leaves a short step:
    # no 20-token chunk (40 ms for 10 ms of work). A chunk waits for a step that holds
    # `prefill_worth` (4) times the fixed cost in work, 240 tokens: meanwhile decode-only
    # steps let the paced request run ahead, and its lead then pays for one long chunk.
    cost = StepCoefficients(0.01, 0.001, 0.0005, 0.0, prefill_step_s=0.03)
    now = 10.0

    def prompt_tokens(lead_s: float, steps: int = 1, **config) -> int:
        policy = TierPolicy(step_model=fitted(cost), config=TierPolicyConfig(**config))
        ultra = running_seq("u", "ultra", outputs=10, first_token_time=0.0)
        # place its next token `lead_s` from now
        ultra.first_token_time = now + lead_s - 10 / (15 * policy.config.pace)
        waiting = Sequence("p", [1] * 400, SamplingParams(), terms=terms("free", now))
        waiting.status = SequenceStatus.RUNNING
        waiting.num_computed_tokens = 0
        # `steps` plans came before this one (every 20th step is a minimum-share step)
        plan = running_plan(policy, [ultra, waiting], now, step_index=steps + 1)
        assert ultra in plan.order
        return plan.token_cap - sum(1 for s in plan.order if not s.is_prefill)

    assert prompt_tokens(lead_s=0.03) == 0
    assert prompt_tokens(lead_s=0.1) == 0  # room for ~118 tokens: waits for a longer lead
    assert prompt_tokens(lead_s=0.1, prefill_worth=1.0) >= 60  # the 1x rule takes it
    assert prompt_tokens(lead_s=0.2) >= 240
    # The prompts' minimum share of steps needs only a chunk worth its fixed cost.
    assert 60 <= prompt_tokens(lead_s=0.03, steps=19) < 240


# Paced high requests that fill every step (overloaded: admitted regardless, always due).
BUSY_COST = StepCoefficients(0.01, 0.003, 0.0002, 1e-7)


def _ttft_beside_60_paced_highs(policy: TierPolicy, tier: str, prompt_len: int) -> float:
    """TTFT of one `tier` request arriving while 60 paced high requests decode (inf: none)."""
    sim = Sim(policy, cost=BUSY_COST)
    for i in range(60):
        sim.add(f"high{i}", "high", prompt_len=64, max_tokens=400)
    sim.run(until=2.0)
    seq = sim.add("late", tier, prompt_len=prompt_len, max_tokens=20)
    while seq.first_token_time is None and sim.now < 10.0:
        sim.step()
    return math.inf if seq.first_token_time is None else sim.ttft("late")


class _NoDeadlines(TierPolicy):
    """The tier policy reading every request's TTFT deadline as never."""

    def context(self, view):  # type: ignore[no-untyped-def]
        ctx = super().context(view)
        ctx.deadline = lambda r: math.inf  # type: ignore[method-assign]
        return ctx


def test_a_long_prompt_gets_the_prefill_it_needs_to_make_its_ttft():
    def ttft(urgent: bool) -> float:
        # (the deadline rule alone: not the one that runs the dearest prompts at once)
        config = TierPolicyConfig(max_utilization=10.0, at_once_usd_per_mtok=math.inf)
        # without the TTFT rule, the same policy gives prompts only the spare step time
        cls = TierPolicy if urgent else _NoDeadlines
        policy = cls(config, step_model=fitted(BUSY_COST))
        return _ttft_beside_60_paced_highs(policy, "super", prompt_len=1200)

    assert ttft(urgent=True) <= TIERS["super"].ttft_s
    assert ttft(urgent=False) > TIERS["super"].ttft_s  # the rule is what makes it


def test_the_dearest_first_tokens_do_not_wait_for_their_deadline():
    def ttft(at_once_usd_per_mtok: float) -> float:
        # An ultra prompt ($45/M) arrives beside the paced high requests.
        config = TierPolicyConfig(max_utilization=10.0, at_once_usd_per_mtok=at_once_usd_per_mtok)
        policy = TierPolicy(config, step_model=fitted(BUSY_COST))
        return _ttft_beside_60_paced_highs(policy, "ultra", prompt_len=600)

    assert ttft(30.0) < 0.5 * TIERS["ultra"].ttft_s  # runs as soon as it can
    # Only above the price: at $50/M it waits until its deadline nears (and still makes it).
    assert 0.5 * TIERS["ultra"].ttft_s < ttft(50.0) <= TIERS["ultra"].ttft_s


def test_the_step_model_learns_the_step_period_not_just_the_compute():
    def stats(start: float, running: int) -> StepStats:
        return StepStats(
            started_at=start, duration_s=0.02, num_seqs=4, num_decode_tokens=4,
            num_prefill_tokens=0, num_kv_tokens_read=400, num_sampled=4, num_preempted=0,
            num_waiting=0, num_running=running, kv_usage=0.1,
        )

    # 20 ms of compute, a step every 30 ms while work is in hand: pacing must plan with 30.
    busy = TierPolicy(step_model=StepTimeModel(skip_first=0))
    for i in range(200):
        busy.learn(stats(i * 0.03, running=4))
    assert busy.model.predict(4, 0, 400) == pytest.approx(0.03, rel=0.05)
    # The engine idle between steps (nothing left running): the gap is not step time.
    idle = TierPolicy(step_model=StepTimeModel(skip_first=0))
    for i in range(200):
        idle.learn(stats(i * 0.03, running=0))
    assert idle.model.predict(4, 0, 400) == pytest.approx(0.02, rel=0.05)
