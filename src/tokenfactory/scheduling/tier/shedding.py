"""Shedding: sheddable work (the free tier) refused at once, with a Retry-After, when capacity
for it is gone, instead of being served late.

On arrival (`shed_on_arrival`): a sheddable request that cannot be admitted is refused when
dearer work already waits for capacity, or when it could not start within `shed_wait_share`
of its TTFT. Behind a queue (`shed_behind_queue`): admission weighs running work only, so a
new sheddable arrival is also refused when the prompts queued ahead of it, at the rate queued
prompts were computed lately, would take more than `queue_shed_share` of its TTFT. Overdue
(`shed_overdue`): a sheddable request still queued, never run, once its TTFT has passed: its
promise is lost, and served late it would only lengthen the queue behind it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from tokenfactory.scheduling.queued_prompt_rate import QueuedPromptRate
from tokenfactory.scheduling.tier.context import PlanContext
from tokenfactory.scheduling.tier.load import Load
from tokenfactory.scheduling.tier.terms import received_at
from tokenfactory.scheduling.view import (
    Refusal,
    RequestView,
    awaits_arrival_judgement,
    is_new_arrival,
)


def retry_after_s(
    ctx: PlanContext, r: RequestView, running: Sequence[RequestView]
) -> float | None:
    """How long until `r` would be admissible: None if it is now, math.inf if never.

    Running requests of its tier and dearer ones are assumed to finish at their promised pace
    (best effort: at its minimum share of the steps), so the estimate errs long: a basis for
    Retry-After."""
    cfg = ctx.config
    rank = ctx.rank(r)
    others = [s for s in running if ctx.rank(s) >= rank]
    if ctx.busy_with(ctx.sum_load(others), r) <= cfg.max_utilization:
        return None
    if ctx.busy_with(Load(), r) > cfg.max_utilization:
        return math.inf
    speeds = [s for s in (ctx.level(q).tokens_per_s for q in [*others, r]) if s is not None]
    rate = max(speeds) * cfg.pace if speeds else 1.0 / cfg.max_step_s
    ends = []
    for other in others:
        left = other.max_tokens or cfg.unbounded_max_tokens
        left = max(0, left - other.num_output_tokens) + max(0, other.num_uncomputed_tokens - 1)
        speed = ctx.level(other).tokens_per_s or cfg.min_share * rate
        ends.append((left / speed, other.request_id))
    ends.sort()
    gone: set[str] = set()
    for wait, rid in ends:
        gone.add(rid)
        remaining = [s for s in others if s.request_id not in gone]
        if ctx.busy_with(ctx.sum_load(remaining), r) <= cfg.max_utilization:
            return wait
    return math.inf  # unreachable: alone it fits


def shed_on_arrival_due(ctx: PlanContext, r: RequestView) -> bool:
    """`r` is sheddable and no plan has judged it on arrival yet (judged once, the first time
    admission reaches it and it does not fit)."""
    return ctx.terms(r).sheddable and awaits_arrival_judgement(r)


def shed_on_arrival(
    ctx: PlanContext,
    r: RequestView,
    running: Sequence[RequestView],
    waiting_dearer: RequestView | None,
) -> float | None:
    """The Retry-After (capped) to refuse `r` with, a sheddable arrival that was not admitted
    (`shed_on_arrival_due`), or None to let it wait. `waiting_dearer`: the dearest request
    refused admission in this plan so far."""
    cfg = ctx.config
    retry: float | None
    if waiting_dearer is not None and ctx.rank(waiting_dearer) > ctx.rank(r):
        # Dearer work waits for capacity, and this tier would wait behind it: capacity is
        # gone for this tier. Hint when that waiting request could start.
        retry = retry_after_s(ctx, waiting_dearer, running) or 1.0
    else:
        retry = retry_after_s(ctx, r, running)
        budget = (ctx.level(r).ttft_s or cfg.best_effort_ttft_s) * cfg.shed_wait_share
        if retry is None or retry <= budget:
            return None
    return min(max(retry, 1.0), cfg.max_retry_after_s)


def shed_behind_queue(
    ctx: PlanContext,
    waiting: Sequence[RequestView],
    running: Sequence[RequestView],
    prompt_rate: QueuedPromptRate,
) -> list[Refusal]:
    """New sheddable arrivals in `waiting` whose first token would come too late behind the
    prompts ahead of them: the running prompts and the requests admission puts first. Their
    wait is those prompt tokens over the rate queued prompts were computed lately; when it is
    more than `queue_shed_share` of the time left to the TTFT, the request is refused now,
    with that wait as Retry-After."""
    share = ctx.config.queue_shed_share
    if share <= 0:
        return []
    new = {r.request_id for r in waiting if ctx.terms(r).sheddable and is_new_arrival(r)}
    if not new or prompt_rate.tokens_per_s() is None:
        return []
    ahead = sum(r.num_uncomputed_tokens for r in running if r.is_prefill)
    refused = []
    for r in sorted(waiting, key=ctx.urgency):
        ahead += r.num_uncomputed_tokens
        if r.request_id not in new:
            continue
        wait = prompt_rate.wait_s(ahead)
        if wait is not None and wait > share * (ctx.deadline(r) - ctx.now):
            retry = min(max(wait, 1.0), ctx.config.max_retry_after_s)
            refused.append(Refusal(r, retry))
            ahead -= r.num_uncomputed_tokens  # refused: no longer ahead of anyone
    return refused


def shed_overdue(ctx: PlanContext, waiting: Sequence[RequestView]) -> list[Refusal]:
    """Sheddable requests in `waiting` that never ran and whose TTFT deadline has passed by
    `overdue_share` of their TTFT (None turns this off): refused now, told to retry after the
    time they have already waited (capped), a measure of how long capacity has been gone."""
    share = ctx.config.overdue_share
    if share is None:
        return []
    refused = []
    for r in waiting:
        terms = ctx.terms(r)
        if not terms.sheddable or r.first_scheduled_time is not None or r.num_preemptions:
            continue
        ttft = ctx.level(r).ttft_s or ctx.config.best_effort_ttft_s
        waited = ctx.now - received_at(r, terms)
        if waited > (1.0 + share) * ttft:
            retry = min(max(waited - ttft, 1.0), ctx.config.max_retry_after_s)
            refused.append(Refusal(r, retry))
    return refused
