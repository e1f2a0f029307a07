"""The `priority` policy: strict tier-rank order, lowest rank preempted first."""

from __future__ import annotations

from tests.engine.test_scheduler import FakeEngine, config
from tokenfactory.engine.sampling_params import SamplingParams
from tokenfactory.engine.sequence import Sequence
from tokenfactory.scheduling.policy import make_policy
from tokenfactory.scheduling.priority import PriorityPolicy
from tokenfactory.tiers import BEST_EFFORT, ServiceTerms

from .views import view_of


def ranked(rank: int) -> ServiceTerms:
    return ServiceTerms(tier=f"rank{rank}", rank=rank, promise=BEST_EFFORT)


def seq(rid: str, rank: int | None, arrival: float) -> Sequence:
    terms = None if rank is None else ranked(rank)
    s = Sequence(rid, [1, 2, 3], SamplingParams(max_tokens=4), terms=terms)
    s.arrival_time = arrival
    return s


def test_orders_by_rank_then_arrival_and_preempts_lowest_newest():
    policy = make_policy("priority")
    assert isinstance(policy, PriorityPolicy)
    seqs = [
        seq("free-old", 0, 1.0),
        seq("super", 4, 3.0),
        seq("std", 1, 0.5),
        seq("none", None, 0.0),
        seq("free-new", 0, 2.0),
    ]
    plan = policy.plan(view_of(running=seqs, waiting=seqs))
    order = [s.request_id for s in plan.admit]
    assert order == ["super", "std", "none", "free-old", "free-new"]
    assert [r.request_id for r in plan.run] == order
    assert [s.request_id for s in plan.preempt_order] == order[::-1]


def test_blocks_running_short_preempt_the_free_request_not_the_paid_one():
    eng = FakeEngine(config(max_num_batched_tokens=64), num_blocks=8, policy="priority")
    free = eng.add("free", list(range(1, 9)), max_tokens=20, arrival=0.0)
    paid = eng.add("paid", list(range(11, 19)), max_tokens=20, arrival=1.0)
    paid.terms = ranked(3)
    eng.run()
    assert paid.num_preemptions == 0
    assert free.num_preemptions >= 1
    assert len(free.output_token_ids) == 20 and len(paid.output_token_ids) == 20
