"""The tier policy's speculation: draft tokens for the paying paced requests that one token per
step leaves behind their promise, and for any paying request where drafts pay for themselves.

Free and best-effort requests never draft: their tokens are sold for throughput, and at large
batch a draft token costs throughput. A paying request whose promise a step of this length
cannot keep (its token interval is shorter than the step) may spend up to
`speculation_throughput_cost` of the step's throughput on its drafts, dearest first.
"""

from __future__ import annotations

from tokenfactory.scheduling.speculation import (
    DraftCandidate,
    StepEstimate,
    plan_draft_tokens,
)
from tokenfactory.scheduling.tier.context import PlanContext
from tokenfactory.scheduling.tier.running import RunningPlan
from tokenfactory.scheduling.view import SchedulerView


def plan_drafts(ctx: PlanContext, view: SchedulerView, running: RunningPlan) -> dict[str, int]:
    """Draft tokens by request id for the decodes this step carries."""
    carried = running.decodes
    if view.max_draft_tokens <= 0 or not carried:
        return {}
    kv = sum(r.num_tokens for r in carried)
    pending = sum(r.num_uncomputed_tokens for r in running.prompts)
    prompt = max(0, min(pending, running.token_cap - len(carried)))
    step_s = ctx.model.predict(len(carried), prompt, kv)
    candidates = []
    for r in carried:
        level = ctx.level(r)
        if level.tokens_per_s is None or level.output_price <= 0:
            continue
        behind = ctx.interval(r) < step_s
        candidates.append(DraftCandidate(r, weight=ctx.weight(r), buys_speed=behind))
    estimate = StepEstimate(step_s, len(carried), ctx.coef.draft_token_s)
    return plan_draft_tokens(
        candidates,
        estimate,
        view.max_draft_tokens,
        view.draft_acceptance,
        ctx.config.speculation_throughput_cost,
    )
