"""The `tier` policy's admission (`tier.admission`): which waiting requests start, in which
order, against the fluid load estimate (`tier.load`), and at which level (`tier.terms`)."""

from __future__ import annotations

import pytest

from tests.scheduling.tier_support import (
    TIERS,
    Sim,
    context,
    fitted,
    may_admit,
    running_seq,
    utilization,
    waiting_seq,
)
from tests.scheduling.views import view_of
from tokenfactory.engine.sampling_params import SamplingParams
from tokenfactory.engine.sequence import Sequence
from tokenfactory.scheduling.step_model import StepCoefficients
from tokenfactory.scheduling.tier.admission import downgrade, fits, plan_admission
from tokenfactory.scheduling.tier.policy import TierPolicy
from tokenfactory.scheduling.tier.running import plan_running


def admitted(policy: TierPolicy, running: list[Sequence], waiting: list[Sequence], now: float):
    """The requests one plan admits from `waiting`, with the step's whole budget for them."""
    view = view_of(running=running, waiting=waiting, now=now)
    return plan_admission(policy.context(view), view, 0, (), None).admit


def test_infeasible_admission_waits_until_capacity_frees():
    # 10 ms per decode: each super request (25 tokens/s, paced 10% faster) keeps the engine
    # ~28% busy; three fit (~85%), a fourth would need ~113%: it must wait.
    cost = StepCoefficients(0.001, 0.01, 0.0001, 0.0)
    policy = TierPolicy(step_model=fitted(cost))
    sim = Sim(policy, cost=cost)
    for i in range(3):
        sim.add(f"super{i}", "super", max_tokens=30)
    sim.step()
    assert sim.sched.num_running == 3
    sim.add("super3", "super", max_tokens=30)
    sim.step()
    assert "super3" not in {s.request_id for s in sim.sched.running}
    running = list(sim.sched.running)
    assert utilization(policy, running, sim.now) <= policy.config.max_utilization
    assert utilization(policy, [*running, sim.seqs["super3"]], sim.now) > 1.0
    # It is admitted once an earlier request finishes, and every promise was kept.
    sim.run()
    first_done = min(s.finished_time for rid, s in sim.seqs.items() if rid != "super3")
    assert sim.seqs["super3"].first_scheduled_time >= first_done
    for rid, seq in sim.seqs.items():
        assert seq.num_output_tokens == 30
        promised = seq.terms.promise.tokens_per_s
        assert sim.speed(rid) >= promised, rid


def test_dearer_work_is_admitted_whatever_cheaper_work_needs():
    # Five ultra requests and a free one fill the engine (~85% busy); a super request still
    # fits beside the ultras alone, so it is admitted (cheaper work gets what is left), while a
    # standard request, which has to fit beside everything dearer, waits.
    cost = StepCoefficients(0.001, 0.01, 0.0001, 0.0)
    policy = TierPolicy(step_model=fitted(cost))
    running = [running_seq(f"u{i}", "ultra", 3, 0.0) for i in range(5)]
    sup = waiting_seq("super", "super")
    std = waiting_seq("std", "standard")
    assert utilization(policy, [*running, sup]) > policy.config.max_utilization
    assert may_admit(policy, sup, running)
    assert not may_admit(policy, std, [*running, sup])


def test_an_auto_request_starts_at_once_at_a_slower_tier_when_its_own_is_full():
    # A super and three ultra requests keep the engine ~87% busy; a standard request (4
    # tokens/s) would take it past 90%, at the free tier's 1 token/s it fits. Asked for by
    # name, standard waits; with service_tier=auto ("downgradable") it starts now, paced,
    # valued and later billed as free.
    cost = StepCoefficients(0.001, 0.011, 0.0001, 0.0)
    policy = TierPolicy(step_model=fitted(cost))
    running = [
        running_seq("super", "super", 3, 0.0),
        *(running_seq(f"u{i}", "ultra", 3, 0.0) for i in range(3)),
    ]
    named = waiting_seq("named", "standard")
    auto_terms = TIERS.service_terms(TIERS["standard"], downgradable=True, received_at=0.0)
    auto = Sequence("auto", [1] * 8, SamplingParams(), terms=auto_terms)
    ctx = context(policy, 0.0, running, [named, auto])
    assert not fits(ctx, named, running) and downgrade(ctx, named, running) is None
    assert ctx.level(named).tokens_per_s == TIERS["standard"].tokens_per_s
    assert not fits(ctx, auto, running)
    slower = downgrade(ctx, auto, running)
    assert slower is not None
    assert slower.promise.tokens_per_s == TIERS["free"].tokens_per_s
    assert slower.promise.output_price == TIERS["free"].output_price
    # The plan says so, and from then on the request is read by those terms.
    view = view_of(running=running, waiting=[auto])
    plan = plan_admission(policy.context(view), view, 0, (), None)
    assert plan.admit == [auto]
    assert [(d.request, d.terms) for d in plan.downgrades] == [(auto, slower)]
    auto.terms = slower  # as the scheduler applies it
    ctx = context(policy, 0.0, running, [auto])
    assert ctx.level(auto).tokens_per_s == TIERS["free"].tokens_per_s
    assert ctx.level(auto).output_price == TIERS["free"].output_price
    # It starts now, so its first token keeps standard's deadline, not free's 30 s (with
    # that, its prompt would wait and it would start later than the request that waited).
    assert ctx.deadline(auto) == pytest.approx(TIERS["standard"].ttft_s)
    # When no slower level fits either, it waits at its own tier like any other request.
    other = Sequence("other", [1] * 8, SamplingParams(), terms=auto_terms)
    busy = [*running, running_seq("s0", "standard", 3, 0.0)]
    ctx = context(policy, 0.0, busy, [other])
    assert not fits(ctx, other, busy) and downgrade(ctx, other, busy) is None
    assert ctx.level(other).tokens_per_s == TIERS["standard"].tokens_per_s


def test_free_tier_is_admitted_even_when_paid_load_is_full():
    cost = StepCoefficients(0.001, 0.05, 0.0001, 0.0)  # one super alone is ~140% busy
    policy = TierPolicy(step_model=fitted(cost))
    running = [running_seq("super", "super", outputs=5, first_token_time=0.0)]
    assert utilization(policy, running) > 1
    paid = waiting_seq("std", "standard")
    free = waiting_seq("free", "free")
    assert not may_admit(policy, paid, running)
    assert may_admit(policy, free, running)  # the minimum share for free work
    assert not may_admit(policy, free, [*running, running_seq("f0", "free", 3, 0.0)])


def test_prefill_and_admission_ordered_by_value_then_ttft_deadline():
    policy = TierPolicy()
    now = 5.5
    free = waiting_seq("free", "free", 0.0)
    # 0.4 s left of its 6 s TTFT, against 2.9 s for the high request: still after it.
    std_late = waiting_seq("std-late", "standard", -0.1)
    std = waiting_seq("std", "standard", 5.0)
    high = waiting_seq("high", "high", 5.4)
    sup = waiting_seq("super", "super", 5.0)
    missed = waiting_seq("missed", "super", -30.0)  # every level's TTFT is past
    waiting = [free, missed, std, std_late, high, sup]
    expected = ["super", "high", "std-late", "std", "free", "missed"]
    ctx = context(policy, now, (), waiting)
    assert [s.request_id for s in sorted(waiting, key=ctx.urgency)] == expected
    # An idle engine admits them all, in that order.
    assert [s.request_id for s in admitted(policy, [], waiting, now)] == expected


def test_lower_tiers_do_not_overtake_a_request_waiting_for_capacity():
    cost = StepCoefficients(0.001, 0.01, 0.0001, 0.0)
    policy = TierPolicy(step_model=fitted(cost))
    running = [running_seq(f"s{i}", "super", 3, 0.0) for i in range(3)]  # ~85% busy
    sup = waiting_seq("super", "super")
    std = waiting_seq("std", "standard")
    assert utilization(policy, [*running, std]) <= policy.config.max_utilization
    ctx = context(policy, 0.0, running, [sup, std])
    assert not fits(ctx, sup, running)
    assert fits(ctx, std, running)  # it would fit, but super waits first
    assert admitted(policy, running, [sup, std], 0.0) == []
    # The whole plan agrees (its step leaves room for a prompt).
    plan = policy.plan(view_of(running=running, waiting=[std, sup], now=0.0))
    assert plan.token_budget > len(plan.run) and plan.admit == ()
    # Next step, super no longer waiting: standard is admitted.
    assert admitted(policy, running, [std], 0.1) == [std]


def test_sheddable_work_leaves_sequence_slots_for_paid_work():
    policy = TierPolicy(step_model=fitted(StepCoefficients(0.0001, 0.00001, 0.0, 0.0)))
    running = [running_seq(f"f{i}", "free", 3, 0.0) for i in range(4)]
    free = waiting_seq("f", "free", sheddable=True)
    paid = waiting_seq("p", "standard")
    # half the slots are taken
    assert not may_admit(policy, free, running, max_num_seqs=8)
    assert may_admit(policy, paid, running, max_num_seqs=8)
    assert may_admit(policy, free, running[:3], max_num_seqs=8)


def test_a_request_with_nothing_as_dear_running_is_admitted_even_when_it_cannot_fit():
    # Steps so slow that a super request alone is "~140% busy": waiting would not change that
    # while only cheaper work runs (it is not counted and yields step by step), so it is let
    # in at once instead of waiting for the engine to drain.
    cost = StepCoefficients(0.05, 0.002, 0.0001, 0.0)
    policy = TierPolicy(step_model=fitted(cost))
    free = [running_seq(f"f{i}", "free", 3, 0.0) for i in range(20)]
    sup = waiting_seq("super", "super")
    assert utilization(policy, [sup]) > 1
    assert may_admit(policy, sup, free)
    # beside another super it must still fit
    assert not may_admit(policy, sup, [*free, running_seq("s0", "super", 3, 0.0)])


def test_a_request_that_missed_its_ttft_is_paced_and_valued_at_the_tier_it_can_still_earn():
    policy = TierPolicy(step_model=fitted())
    on_time = waiting_seq("a", "ultra", fallbacks=True)
    on_time.first_token_time = 1.5  # within ultra's 2 s
    late = waiting_seq("b", "ultra", fallbacks=True)
    late.first_token_time = 2.5  # within high's 3 s only
    ctx = context(policy, 0.0)
    assert ctx.level(on_time).tokens_per_s == TIERS["ultra"].tokens_per_s
    assert ctx.level(late).tokens_per_s == TIERS["high"].tokens_per_s
    assert ctx.weight(late) < ctx.weight(on_time)
    # Still waiting for its first token: valued at the best TTFT it can still meet.
    waiting = waiting_seq("c", "ultra", fallbacks=True)
    assert context(policy, 1.0, (), [waiting]).level(waiting).output_price == (
        TIERS["ultra"].output_price
    )
    assert context(policy, 4.0, (), [waiting]).level(waiting).output_price == (
        TIERS["standard"].output_price
    )


def test_utilization_is_the_same_through_the_per_plan_cache():
    # Admission reads the running load through a cache kept by rank for the plan and brought
    # up to date as requests are admitted; it must sum as a fresh reading does.
    tiers = ["free", "standard", "high", "ultra", "super", None]
    seqs = [running_seq(f"r{i}", tiers[i % 6], 3 + i, 0.0) for i in range(30)]
    seqs[4].num_computed_tokens = 2  # one still in prefill
    policy = TierPolicy(step_model=fitted())
    entrant = waiting_seq("w", "super")
    warm = context(policy, 0.0, seqs[:10], [entrant])
    plan_running(warm, seqs[:10], [entrant], 1)  # its entrant's fit fills the cache
    for n in range(10, 31):  # as admission asks: running, then one admission at a time
        fresh = context(policy, 0.0)
        expected = fresh.busy(fresh.sum_load(seqs[:n]))
        assert warm.busy(warm.load_from(0, seqs[:n])) == pytest.approx(expected)
        assert warm.busy(warm.sum_load(seqs[:n])) == pytest.approx(expected)
    other = seqs[5:]  # not a prefix of what was cached
    fresh = context(policy, 0.0)
    assert warm.busy(warm.sum_load(other)) == pytest.approx(fresh.busy(fresh.sum_load(other)))
