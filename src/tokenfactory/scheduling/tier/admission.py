"""Admission by value: a waiting request is admitted when the requests of its tier and dearer
ones, itself included, fit in the engine's time (`max_utilization` of a fluid estimate); after
`last_call` of its TTFT, up to a full load. Cheaper running work does not hold dearer work
back: it gets what is left. A request that does not fit waits, and cheaper tiers wait behind
it; one that asked for `service_tier=auto` starts at once at a slower tier that fits instead.
Sheddable work may hold at most `sheddable_slot_share` of the sequence slots, and the lowest
tier is always let in while fewer than `min_free_running` of its requests run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from tokenfactory.scheduling.tier.context import PlanContext
from tokenfactory.scheduling.tier.shedding import shed_on_arrival, shed_on_arrival_due
from tokenfactory.scheduling.tier.terms import downgraded, received_at
from tokenfactory.scheduling.view import (
    Downgrade,
    Refusal,
    RequestView,
    SchedulerView,
    chunk_tokens,
)
from tokenfactory.tiers import ServiceTerms


def fits(ctx: PlanContext, r: RequestView, running: Sequence[RequestView]) -> bool:
    """Whether `r` may start now beside `running`, at the level it is read at."""
    cfg = ctx.config
    if not running:
        # An idle engine takes anything: a request whose promise cannot be kept even alone
        # must still run (at the best speed there is), never wait forever.
        return True
    terms = ctx.terms(r)
    if terms.sheddable and len(running) >= cfg.sheddable_slot_share * ctx.max_num_seqs:
        # Slow sheddable work must not hold every sequence slot: dearer work needs some.
        return False
    if free_share_due(ctx, r, running):
        return True
    base = ctx.load_from(terms.rank, running)
    if base.count == 0:
        # Nothing of its tier or dearer runs: waiting cannot make it fit better (cheaper work
        # is not counted; it yields to this request step by step).
        return True
    busy = ctx.busy_with(base, r)
    if busy <= cfg.max_utilization:
        return True
    # Waiting longer would cost it its TTFT: admit it while the load is still possible at
    # all (the margin is for noise; missing the first token for sure is worse).
    waited = ctx.now - received_at(r, terms)
    ttft = ctx.level(r).ttft_s or cfg.best_effort_ttft_s
    return waited >= cfg.last_call * ttft and busy <= 1.0


def free_share_due(ctx: PlanContext, r: RequestView, running: Sequence[RequestView]) -> bool:
    """A lowest-tier request while fewer than `min_free_running` of them run."""
    n = ctx.config.min_free_running
    if n <= 0 or ctx.rank(r) != 0:
        return False
    return sum(1 for s in running if ctx.rank(s) == 0) < n


def downgrade(
    ctx: PlanContext, r: RequestView, running: Sequence[RequestView]
) -> ServiceTerms | None:
    """For a request that asked for `service_tier=auto` and does not fit at its level: the
    terms of the best slower level that fits now (the plan reads it by them from then on), or
    None. Requests that named their tier wait for it."""
    terms = ctx.terms(r)
    if not terms.downgradable:
        return None
    level = ctx.level(r)  # settled: its TTFT, the shortest left, is not past
    levels = terms.levels
    current = next(i for i, lv in enumerate(levels) if lv is level)
    for i in range(current + 1, len(levels)):
        tried = downgraded(terms, levels[i], level.ttft_s)
        ctx.try_terms(r, tried)
        if fits(ctx, r, running):
            return tried
    ctx.try_terms(r, None)
    return None


@dataclass
class AdmissionPlan:
    admit: list[RequestView] = field(default_factory=list)  # in order
    downgrades: list[Downgrade] = field(default_factory=list)
    refusals: list[Refusal] = field(default_factory=list)  # new sheddable arrivals refused
    judged: list[RequestView] = field(default_factory=list)  # ... and those let wait
    running: list[RequestView] = field(default_factory=list)  # running once admitted


def plan_admission(
    ctx: PlanContext,
    view: SchedulerView,
    decodes: int,
    prompts: Sequence[RequestView],
    token_cap: int | None,
) -> AdmissionPlan:
    """The waiting requests to admit, most urgent first, as far as the step's budget and
    sequence slots reach once the running work has stepped (the scheduler stops there too,
    and where KV blocks run out). A request that does not fit is passed over, and cheaper
    tiers wait behind it; a sheddable one not judged on arrival yet is judged for shedding."""
    budget, steps = _budget_after(view, decodes, prompts, token_cap)
    plan = AdmissionPlan(running=list(view.running))
    running = plan.running
    refused_rank, refused = -1, None
    for r in sorted(view.waiting, key=ctx.urgency):
        if budget <= 0 or len(running) >= view.max_num_seqs or steps >= view.max_num_seqs:
            break
        rank = ctx.rank(r)
        # No overtaking: once a request waits for capacity, cheaper tiers wait behind it
        # (except the lowest tier's minimum share).
        held = bool(running) and rank < refused_rank and not free_share_due(ctx, r, running)
        slower = None
        admitted = not held and (fits(ctx, r, running) or (slower := downgrade(ctx, r, running)))
        if admitted:
            if slower is not None:
                plan.downgrades.append(Downgrade(r, slower))
            plan.admit.append(r)
            pending = r.num_uncomputed_tokens
            n = chunk_tokens(
                pending, budget, view.chunked_prefill, steps == 0, view.max_num_batched_tokens
            )
            if n == 0:
                break  # head of line: the scheduler stops at it
            budget, steps = budget - n, steps + 1
            running.append(r)
            continue
        if rank > refused_rank:
            refused_rank, refused = rank, r
        if shed_on_arrival_due(ctx, r):
            retry = shed_on_arrival(ctx, r, running, refused)
            if retry is not None:
                plan.refusals.append(Refusal(r, retry))
            else:
                plan.judged.append(r)
    return plan


def _budget_after(
    view: SchedulerView, decodes: int, prompts: Sequence[RequestView], token_cap: int | None
) -> tuple[int, int]:
    """The step's token budget left, and the requests stepped, once `decodes` running
    requests have stepped a token each and then `prompts` their chunks."""
    budget = view.max_num_batched_tokens
    if view.chunked_prefill and token_cap is not None:
        budget = min(budget, max(1, token_cap))
    steps = min(decodes, budget, view.max_num_seqs)
    budget -= steps
    for r in prompts:
        if budget <= 0 or steps >= view.max_num_seqs:
            break
        n = chunk_tokens(
            r.num_uncomputed_tokens,
            budget,
            view.chunked_prefill,
            steps == 0,
            view.max_num_batched_tokens,
        )
        if n:
            budget, steps = budget - n, steps + 1
    return budget, steps
