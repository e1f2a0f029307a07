"""The `tier` policy's shedding (`tier.shedding`): sheddable work refused at once, with a
Retry-After, when capacity for it is gone; and the Retry-After estimate itself."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from tests.scheduling.tier_support import (
    SLOWER_CPU_COST,
    TIERS,
    Sim,
    context,
    fitted,
    may_admit,
    running_seq,
    terms,
    waiting_seq,
)
from tests.scheduling.views import view_of
from tokenfactory.engine.sampling_params import SamplingParams
from tokenfactory.engine.sequence import FinishReason, Sequence
from tokenfactory.scheduling.policy import make_policy
from tokenfactory.scheduling.step_model import StepCoefficients
from tokenfactory.scheduling.step_stats import StepStats
from tokenfactory.scheduling.tier.config import TierPolicyConfig
from tokenfactory.scheduling.tier.policy import TierPolicy
from tokenfactory.scheduling.tier.shedding import (
    retry_after_s,
    shed_behind_queue,
    shed_on_arrival,
    shed_on_arrival_due,
    shed_overdue,
)


def test_retry_after_estimates_when_a_waiting_request_fits():
    cost = StepCoefficients(0.001, 0.01, 0.0001, 0.0)
    policy = TierPolicy(step_model=fitted(cost))
    running = [running_seq(f"s{i}", "super", 3, 0.0) for i in range(3)]  # ~85% busy
    for i, seq in enumerate(running):
        seq.params.max_tokens = 3 + 25 * (i + 1)  # s0 has 25 tokens left: 1 s at 25 tokens/s
    std = waiting_seq("std", "standard")
    sup = waiting_seq("super", "super")
    ctx = context(policy, 0.0, running, [std, sup])
    assert retry_after_s(ctx, std, running) is None  # fits now
    # Another super fits once one is gone: the first to finish, at its promised pace.
    assert retry_after_s(ctx, sup, running) == pytest.approx(1.0)
    huge = StepCoefficients(0.001, 1.0, 0.0001, 0.0)  # 25 s of work per second: never
    never = context(TierPolicy(step_model=fitted(huge)), 0.0, running, [sup])
    assert retry_after_s(never, sup, running) == math.inf


def test_sheddable_request_is_refused_on_arrival_only_when_capacity_is_gone():
    cost = StepCoefficients(0.001, 0.011, 0.0001, 0.0)
    policy = TierPolicy(step_model=fitted(cost))

    def free(rid: str) -> Sequence:
        return Sequence(
            rid, [1] * 8, SamplingParams(max_tokens=30), terms=terms("free", 0.0, sheddable=True)
        )

    def shed(seq: Sequence, running: list[Sequence]) -> float | None:
        """The Retry-After a plan refuses `seq` with on arrival (None: it may wait)."""
        ctx = context(policy, 0.0, running, [seq])
        if not shed_on_arrival_due(ctx, seq):
            return None
        return shed_on_arrival(ctx, seq, running, None)

    # idle engine: free work is admitted, never shed
    assert may_admit(policy, free("f0"), [])
    # Three super requests (~94% busy) and one free one running: no room for more free work.
    supers = [running_seq(f"s{i}", "super", 3, 0.0) for i in range(3)]
    running = [*supers, running_seq("f0", "free", 3, 0.0)]
    # The first super ends in 4 s at its pace: later than the free tier's wait budget
    # (`shed_wait_share` of its 30 s TTFT = 3 s), so a free arrival is shed with that hint.
    for i, seq in enumerate(supers):
        seq.params.max_tokens = 3 + 100 * (i + 1)
    late = free("f1")
    assert not may_admit(policy, late, running)
    assert shed(late, running) == pytest.approx(4.0)
    # A plan refuses it so (its admission reaches it: the step leaves room for prompts).
    plan = policy.plan(view_of(running=running, waiting=[late]))
    assert [(r.request, r.retry_after_s) for r in plan.refuse] == [(late, pytest.approx(4.0))]
    # When capacity frees soon (the first super ends in 2 s), it waits instead.
    supers[0].params.max_tokens = 3 + 50
    soon = free("f2")
    assert not may_admit(policy, soon, running)
    assert shed(soon, running) is None
    plan = policy.plan(view_of(running=running, waiting=[soon]))
    assert plan.refuse == () and plan.judged == (soon,)
    # Judged once, on arrival: when capacity is gone later, it is not refused then.
    soon.judged_on_arrival = True  # as the scheduler records it from `plan.judged`
    supers[0].params.max_tokens = 3 + 100
    assert shed(soon, running) is None
    assert policy.plan(view_of(running=running, waiting=[soon])).refuse == ()
    # Paid work is never shed.
    paid = waiting_seq("std", "standard")
    assert shed(paid, running) is None


def test_a_shed_request_ends_in_the_engine_with_its_retry_after():
    cost = StepCoefficients(0.001, 0.011, 0.0001, 0.0)
    policy = TierPolicy(step_model=fitted(cost))
    sim = Sim(policy, cost=cost)
    for i in range(3):
        sim.add(f"s{i}", "super", max_tokens=400)
    sim.add("f0", "free", max_tokens=400)
    sim.step()
    sim.step()
    late = sim.add("f1", "free", max_tokens=30)
    late.terms = replace(late.terms, sheddable=True)
    plan = sim.step()
    assert [s.seq.request_id for s in plan.shed] == ["f1"]
    assert late.finish_reason is FinishReason.SHED
    assert 1.0 <= plan.shed[0].retry_after_s <= policy.config.max_retry_after_s
    assert sim.bm.num_free_blocks == sim.bm.num_blocks - sum(
        len(s.block_table) for s in sim.sched.running
    )


def test_fcfs_and_priority_never_shed():
    for name in ("fcfs", "priority"):
        seq = Sequence("f", [1] * 8, SamplingParams(), terms=terms("free", 0.0, sheddable=True))
        assert make_policy(name).plan(view_of(waiting=[seq])).refuse == ()


def _queued(policy: TierPolicy, tokens_per_s: float, seconds: float = 2.0) -> None:
    """Tell the policy that steps with a queue computed prompts at `tokens_per_s`."""
    for i in range(int(seconds / 0.1)):
        policy.learn(StepStats(
            started_at=0.1 * i, duration_s=0.1, num_seqs=4, num_decode_tokens=3,
            num_prefill_tokens=int(tokens_per_s * 0.1), num_kv_tokens_read=100,
            num_sampled=3, num_preempted=0, num_waiting=5, num_running=4, kv_usage=0.1,
        ))


def _waiting(rid: str, tier: str, prompt_len: int, received_at: float = 0.0) -> Sequence:
    t = terms(tier, received_at, sheddable=tier == "free")
    return Sequence(rid, [1] * prompt_len, SamplingParams(max_tokens=30), terms=t)


def _shed_queued(policy: TierPolicy, waiting: list[Sequence]) -> list[tuple[str, int]]:
    """The new arrivals in `waiting` refused behind the queue (request id, Retry-After in whole
    seconds); then every request in it has been seen by a plan, as the scheduler records."""
    ctx = context(policy, 0.0, (), waiting)
    refused = shed_behind_queue(ctx, waiting, [], policy.prompt_rate)
    for seq in waiting:
        seq.seen_by_plan = True
    return [(r.request.request_id, round(r.retry_after_s)) for r in refused]


def test_a_free_arrival_behind_a_queue_it_cannot_clear_in_its_ttft_is_shed():
    policy = TierPolicy(step_model=fitted())
    early = [_waiting(f"std{i}", "standard", 4000) for i in range(3)]
    free = _waiting("f1", "free", 100)
    # No queued steps seen yet: no estimate, no refusal (judged once, so it stays).
    assert _shed_queued(policy, [*early, free]) == []
    _queued(policy, tokens_per_s=1000.0)
    assert _shed_queued(policy, [*early, free]) == []
    # 12,100 prompt tokens ahead of and in it at 1,000 tokens/s: its first token in ~12 s,
    # within its 30 s TTFT: it waits.
    near = _waiting("f2", "free", 100)
    assert _shed_queued(policy, [*early, near]) == []
    # Behind 30,000 more: ~42 s, past its TTFT: refused now, told to come back then.
    more = [_waiting(f"high{i}", "high", 10_000) for i in range(3)]
    late = _waiting("f3", "free", 100)
    assert _shed_queued(policy, [*early, *more, near, late]) == [("f3", 42)]
    # Paid work behind the same queue is never refused this way.
    paid = _waiting("std9", "standard", 100)
    assert _shed_queued(policy, [*early, *more, paid]) == []


def test_queue_shedding_can_be_turned_off():
    policy = TierPolicy(step_model=fitted(), config=TierPolicyConfig(queue_shed_share=0.0))
    _queued(policy, tokens_per_s=100.0)
    queue = [_waiting(f"std{i}", "standard", 4000) for i in range(3)]
    assert _shed_queued(policy, [*queue, _waiting("f", "free", 100)]) == []


def test_in_deep_overload_free_arrivals_behind_the_queue_are_refused_and_paid_work_gains():
    # The benchmark's mix at 8 requests/s on the slower machine's costs: prompts queue far
    # faster than they are computed. Free requests arriving behind that queue would get their
    # first token long after their 30 s TTFT; refused at once instead (429), they leave the
    # engine's time to paid work, and revenue rises.
    from tokenfactory.bench.policy_compare import MIX
    from tokenfactory.bench.policy_sim import SimLoad, simulate

    load = SimLoad(rate=8, duration_s=60, mix=MIX, seed=0)
    runs = {
        share: simulate("tier", load, TIERS, cost=SLOWER_CPU_COST,
                        config=TierPolicyConfig(queue_shed_share=share, overdue_share=None))
        for share in (0.0, 1.0)
    }
    off, on = runs[0.0], runs[1.0]
    assert on["errors"].get("429", 0) >= off["errors"].get("429", 0) + 30
    assert on["revenue_usd_per_s"] >= 1.1 * off["revenue_usd_per_s"]
    for tier in ("standard", "high", "ultra", "super"):
        assert on["attainment"][tier] >= off["attainment"][tier] - 0.03, tier


def test_a_free_request_still_queued_past_its_ttft_is_refused():
    # The cpu preset's free TTFT is 30 s. Past it, the promise is lost: served late it would
    # only lengthen the queue behind it, so it is refused with how long it waited past it.
    policy = TierPolicy(step_model=fitted())
    free = _waiting("f", "free", 100, received_at=0.0)
    paid = _waiting("s", "standard", 100, received_at=0.0)
    for now, expected in ((29.0, []), (30.5, [("f", 1)]), (45.0, [("f", 15)])):
        ctx = context(policy, now, (), [free, paid])
        refused = shed_overdue(ctx, [free, paid])
        assert [(r.request.request_id, round(r.retry_after_s)) for r in refused] == expected


def test_a_preempted_or_started_free_request_is_never_refused_as_overdue():
    policy = TierPolicy(step_model=fitted())
    preempted = _waiting("p", "free", 100)
    preempted.num_preemptions = 1
    started = _waiting("r", "free", 100)
    started.first_scheduled_time = 1.0
    ctx = context(policy, 100.0, (), [preempted, started])
    assert shed_overdue(ctx, [preempted, started]) == []


def test_overdue_shedding_waits_its_share_and_can_be_turned_off():
    free = _waiting("f", "free", 100)
    late = TierPolicy(step_model=fitted(), config=TierPolicyConfig(overdue_share=0.5))
    assert shed_overdue(context(late, 40.0, (), [free]), [free]) == []
    assert len(shed_overdue(context(late, 46.0, (), [free]), [free])) == 1
    never = TierPolicy(step_model=fitted(), config=TierPolicyConfig(overdue_share=None))
    assert shed_overdue(context(never, 1000.0, (), [free]), [free]) == []
