"""This step's running work: which requests step, in which order, under what token cap.

Decodes first: every request that would be late if it skipped this step, then those ahead
while the step still fits its length (`pacing`). Then prompt chunks (continuing, and the next
admission), dearest level first and by TTFT deadline within a level, in the time left. A step
that computes any prompt token pays a fixed cost (decode-only steps take a faster path), so
prompts go in chunks worth several times it (decode-only steps meanwhile build the lead that
pays for them), or wait until their deadline makes them urgent (the dearest first tokens do
not wait); then they run whole, as far as the paced decodes can absorb.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from tokenfactory.scheduling.tier.admission import fits
from tokenfactory.scheduling.tier.context import PlanContext
from tokenfactory.scheduling.tier.pacing import (
    Due,
    absorbable_s,
    carry_due,
    fund_prompts,
    split_decodes,
    target_step_s,
    urgent_prompts,
)
from tokenfactory.scheduling.view import RequestView


@dataclass(frozen=True)
class RunningPlan:
    decodes: list[RequestView]  # decodes carried
    prompts: list[RequestView]  # then the prompts to serve
    token_cap: int  # decodes carried plus the prompt tokens the step has room for

    @property
    def order(self) -> list[RequestView]:
        return [*self.decodes, *self.prompts]


def plan_running(
    ctx: PlanContext,
    running: Sequence[RequestView],
    waiting: Sequence[RequestView],
    step_index: int,
) -> RunningPlan:
    cfg = ctx.config
    model = ctx.model
    per_token = max(ctx.coef.per_prefill_token_s, 1e-9)
    min_step = model.predict(1, 0, 0)
    # Each decoding request's due time, once per step (and the prompts, in the same pass).
    decoding: list[Due] = []
    prefill: list[RequestView] = []
    for r in running:
        if r.is_prefill:
            prefill.append(r)
        else:
            decoding.append((ctx.due_at(r), r))
    target = target_step_s(ctx, decoding)
    # Skipped now, a request's next chance ends after this step and a minimal next one.
    horizon = ctx.now + max(target, min_step) + min_step
    must, due, ahead = split_decodes(ctx, decoding, step_index, horizon)
    # The prompts this step's prefill budget is for: the running ones and the most urgent
    # waiting request that would be admitted (the scheduler admits after running work).
    entrant = _entrant(ctx, running, waiting)
    budget_prefill = prefill if entrant is None else [*prefill, entrant]
    budget_prefill.sort(key=ctx.urgency)

    carried = carry_due(ctx, must, due, target)
    kv = sum(r.num_tokens for r in carried)
    due_s = model.predict(len(carried), 0, kv)
    target = max(target, due_s)
    # Prompts in progress come before ahead decodes: the time the due decodes leave is theirs
    # first (a first token is worth more than running further ahead). A step that computes
    # any prompt token pays the prefill step cost once, so prompts go in chunks worth that
    # cost, or wait.
    fixed = ctx.coef.prefill_step_s
    pending = sum(r.num_uncomputed_tokens for r in budget_prefill)
    # At least as much prompt work as the fixed cost it pays (or all there is); a chunk taken
    # when there is room waits for `prefill_worth` times that: short decode-only steps
    # meanwhile put the paced requests ahead, and their lead pays for a long step.
    least = max(cfg.min_prefill_tokens, math.ceil(fixed / per_token))
    least = min(pending, least) if pending else cfg.min_prefill_tokens
    worth = max(least, min(pending, math.ceil(cfg.prefill_worth * fixed / per_token)))
    room = int((target - due_s - fixed) / per_token)
    reserved = min(pending, room) if room >= worth else 0
    for _, r in ahead:
        # Work-conserving: a step that would otherwise be empty carries someone.
        cost = model.predict(len(carried) + 1, reserved, kv + r.num_tokens)
        if carried and cost > target:
            break
        carried.append(r)
        kv += r.num_tokens

    # Prefill (and admissions) get what is left of the step.
    spare = target - model.predict(len(carried), reserved, kv)
    if reserved:
        prefill_tokens = reserved + max(0, int(spare / per_token))
    else:
        room = int((spare - fixed) / per_token)
        prefill_tokens = room if room >= worth else 0
    every = max(1, round(1 / cfg.min_share)) if cfg.min_share > 0 else None
    paced = any(ctx.level(r).tokens_per_s is not None for r in carried)
    if not paced or (every is not None and step_index % every == 0):
        # Nobody's pace at stake, or the prompts' minimum share of steps: a chunk worth it.
        prefill_tokens = max(least, prefill_tokens)
    # Prompts whose TTFT deadline is near run whole now, even if the step then runs long.
    # Prompts worth as much as the dearest decode carried may lengthen the step as far as they
    # need; cheaper ones only as far as every paced decode can absorb (a cheaper first token
    # does not pay for a dearer promise's miss).
    floor = max((ctx.weight(r) for r in carried), default=0.0)
    dear = [r for r in budget_prefill if ctx.weight(r) >= floor]
    urgent_dear = urgent_prompts(ctx, dear, carried, kv, target)
    prefill_tokens = max(prefill_tokens, sum(r.num_uncomputed_tokens for r in urgent_dear))
    urgent = urgent_prompts(ctx, budget_prefill, carried, kv, target)
    cheap = sum(r.num_uncomputed_tokens for r in urgent)
    if cheap > prefill_tokens:
        limit = absorbable_s(ctx, carried, min_step)
        left_s = limit - model.predict(len(carried), max(1, prefill_tokens), kv)
        prefill_tokens += max(0, min(cheap - prefill_tokens, int(left_s / per_token)))
    prompts = fund_prompts(ctx, urgent, budget_prefill, entrant, prefill_tokens)
    return RunningPlan(carried, prompts, len(carried) + prefill_tokens)


def _entrant(
    ctx: PlanContext, running: Sequence[RequestView], waiting: Sequence[RequestView]
) -> RequestView | None:
    """The most urgent waiting request, when it would be admitted now."""
    if not waiting:
        return None
    first = min(waiting, key=ctx.urgency)
    return first if fits(ctx, first, running) else None
