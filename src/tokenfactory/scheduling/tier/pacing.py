"""Pacing: which running requests step this step, and how long the step may be.

Each paced request has a token schedule from its promised speed (token k is due at
first_token_time + k / (pace * speed)). The step's length is as long as no paced request falls
behind for good (`target_step_s`); every request that would be late if it skipped this step is
carried (`carry_due`: in overload the dearest first), then, work-conserving, requests that are
ahead while the step still fits. Prompt chunks get the time left (`prefill_budget`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from tokenfactory.scheduling.tier.context import PlanContext
from tokenfactory.scheduling.view import RequestView

Due = tuple[float | None, RequestView]  # (when its next token is due, request)


def target_step_s(ctx: PlanContext, decoding: Sequence[Due]) -> float:
    """How long the next step may last without any paced request falling behind for good.

    A request may take a share of its lead (the time until its next token is due), and never
    less than `catch_up` of its token interval: carried in every step that short, a request
    that is late gains on its schedule each step, so lateness never compounds."""
    cfg = ctx.config
    target = cfg.max_step_s
    for due, r in decoding:
        if due is None:
            continue
        target = min(target, max(cfg.slack_share * (due - ctx.now), cfg.catch_up * ctx.interval(r)))
    return target


def split_decodes(
    ctx: PlanContext, decoding: Sequence[Due], step_index: int, horizon: float
) -> tuple[list[RequestView], list[tuple[float, RequestView]], list[tuple[float, RequestView]]]:
    """(must, due, ahead): requests not carried for 1 / min_share steps (carried now), those
    whose next token is due before the next chance after this step, and the rest (least ahead
    first, best effort after every paced request)."""
    cfg = ctx.config
    every = max(1, round(1 / cfg.min_share)) if cfg.min_share > 0 else None
    must: list[RequestView] = []
    due: list[tuple[float, RequestView]] = []
    ahead: list[tuple[float, RequestView]] = []
    for at, r in decoding:
        # First seen decoding: its prompt's last chunk ran (and sampled) last step.
        last = r.last_scheduled_step if r.last_scheduled_step is not None else step_index - 1
        if every is not None and step_index - last >= every:
            must.append(r)
        elif at is not None and at <= horizon:
            due.append((at, r))
        else:
            ahead.append((at if at is not None else math.inf, r))
    due.sort(key=lambda p: (p[0], -ctx.weight(p[1])))
    ahead.sort(key=lambda p: (p[0], -ctx.weight(p[1])))
    return must, due, ahead


def carry_due(
    ctx: PlanContext,
    must: list[RequestView],
    due: list[tuple[float, RequestView]],
    target: float,
) -> list[RequestView]:
    """The due requests this step carries: all of them unless that makes the step longer than
    the dearest due request's token interval (overload: it would fall behind for good). Then
    the dearest tier's and the starving ones always, and the others by value while the step
    still fits: cheaper work falls behind first."""
    carried = [*must, *(r for _, r in due)]
    if not due:
        return carried
    by_value = sorted(due, key=lambda p: (-ctx.weight(p[1]), p[0]))
    top = ctx.weight(by_value[0][1])
    speed = max(ctx.level(r).tokens_per_s or 0.0 for _, r in due if ctx.weight(r) == top)
    limit = max(target, 1.0 / (speed * ctx.config.pace)) if speed > 0 else math.inf
    model = ctx.model
    kv = sum(r.num_tokens for r in carried)
    if model.predict(len(carried), 0, kv) <= limit:
        return carried
    carried = [*must]
    kv = sum(r.num_tokens for r in carried)
    for _, r in by_value:
        if ctx.weight(r) < top:
            cost = model.predict(len(carried) + 1, 0, kv + r.num_tokens)
            if cost > limit:
                continue
        carried.append(r)
        kv += r.num_tokens
    return carried


def absorbable_s(ctx: PlanContext, carried: list[RequestView], min_step: float) -> float:
    """The longest step every carried paced request can absorb and still end on its schedule:
    its lead, plus what its remaining tokens can win back on short steps (each one's interval
    minus a minimal step)."""
    cfg = ctx.config
    limit = cfg.max_step_s
    for r in carried:
        due = ctx.due_at(r)
        if due is None:
            continue
        left = (r.max_tokens or cfg.unbounded_max_tokens) - r.num_output_tokens
        limit = min(
            limit, due - ctx.now + max(0, left - 1) * max(0.0, ctx.interval(r) - min_step)
        )
    return limit


def urgent_prompts(
    ctx: PlanContext,
    prompts: list[RequestView],
    carried: list[RequestView],
    kv: int,
    target: float,
) -> list[RequestView]:
    """The `prompts` (most urgent first) that must run whole this step: a prompt is urgent
    once `ttft_safety` of the time left before its TTFT deadline is no more than this step
    (with it whole) and one more. Noise and the model's error must not turn a just-in-time
    first token into a late one. Prompts of the dearest first tokens (`at_once_usd_per_mtok`)
    are urgent from the start: their TTFTs are the shortest and a miss costs the most, so
    waiting for the deadline only spends their margin."""
    share = ctx.config.ttft_safety
    at_once = ctx.config.at_once_usd_per_mtok * 1_000_000  # prices are in micro-USD
    total = 0
    urgent = []
    for r in prompts:
        n = r.num_uncomputed_tokens
        finish = ctx.model.predict(len(carried), total + n, kv)
        left = ctx.deadline(r) - ctx.now
        if 0 < left and (share * left <= finish + target or ctx.level(r).output_price >= at_once):
            total += n
            urgent.append(r)
    return urgent


def fund_prompts(
    ctx: PlanContext,
    urgent: list[RequestView],
    prompts: list[RequestView],
    entrant: RequestView | None,
    tokens: int,
) -> list[RequestView]:
    """The running prompts to serve, in order: urgent ones first (dearest first), then by
    urgency. Decodes come before them, so the step's cap goes to prompts in this order. When
    the entrant (a waiting request) is funded before some running prompts, those step aside
    for this step so that the budget left reaches its admission."""
    first = sorted(urgent, key=lambda r: -ctx.weight(r))
    order = [*first, *(r for r in prompts if r not in first)]
    if entrant is None or entrant not in order:
        return order
    funded = []
    for r in order:
        if tokens <= 0:
            break
        funded.append(r)
        tokens -= r.num_uncomputed_tokens
    if entrant not in funded:
        return [r for r in order if r is not entrant]
    return [r for r in funded if r is not entrant]
