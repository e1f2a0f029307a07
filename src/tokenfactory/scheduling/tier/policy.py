"""The `tier` policy: every request gets the speed its tier promised, spare steps go to the rest.

In one batch every carried sequence advances one token per step, and a step gets slower as the
batch grows. So instead of carrying everyone every step, the policy paces: slower tiers skip
steps, faster tiers get frequent short steps, and steps grow long and full when nobody is
pressed. Requests without a promise (offline use) are best effort: they only fill, but each
running one is carried at least once every `1 / min_share` steps so it never starves.

A plan is made in parts, each its own module:
- `terms`: a request is read at its level, the best tier it can still be billed at (its own,
  or a slower fallback once its TTFT is missed), so late requests are paced and valued at what
  they can still earn;
- `running` and `pacing`: which running requests step, in which order, under what token cap;
- `admission`: which waiting requests start (by value, against a fluid load estimate from
  `load`), and which `service_tier=auto` requests start at once at a slower tier;
- `shedding`: which sheddable arrivals are refused at once with a Retry-After;
- `speculation`: how many draft tokens each carried decode verifies (paying tiers only).

Between plans the policy keeps only what it learns about the engine: the step-time model (what
a step costs, fitted from the steps it is told about) and the rate queued prompts are computed
at. Everything else is a function of the view.
"""

from __future__ import annotations

from tokenfactory.scheduling.policy import SchedulingPolicy
from tokenfactory.scheduling.queued_prompt_rate import QueuedPromptRate
from tokenfactory.scheduling.step_model import StepCoefficients, StepTimeModel
from tokenfactory.scheduling.step_stats import StepStats
from tokenfactory.scheduling.tier.admission import plan_admission
from tokenfactory.scheduling.tier.config import TierPolicyConfig
from tokenfactory.scheduling.tier.context import PlanContext
from tokenfactory.scheduling.tier.running import plan_running
from tokenfactory.scheduling.tier.shedding import shed_behind_queue, shed_overdue
from tokenfactory.scheduling.tier.speculation import plan_drafts
from tokenfactory.scheduling.view import (
    RequestView,
    SchedulerView,
    SortedOnDemand,
    StepPlan,
)


class TierPolicy(SchedulingPolicy):
    name = "tier"

    def __init__(
        self,
        config: TierPolicyConfig | None = None,
        step_model: StepTimeModel | None = None,
        prior: StepCoefficients | None = None,
    ):
        self.config = config or TierPolicyConfig()
        self.model = step_model or (StepTimeModel(prior) if prior else StepTimeModel())
        self.prompt_rate = QueuedPromptRate()
        self._prev_step: StepStats | None = None  # learned from once the next one is known

    def context(self, view: SchedulerView) -> PlanContext:
        """How this policy reads the requests of `view` (for a plan, or to inspect one)."""
        return PlanContext(view.now, self.config, self.model, view.max_num_seqs)

    def plan(self, view: SchedulerView) -> StepPlan:
        if view.last_step is not None:
            self.learn(view.last_step)
        ctx = self.context(view)
        running = plan_running(ctx, view.running, view.waiting, view.step_index)
        admission = plan_admission(
            ctx, view, len(running.decodes), running.prompts, running.token_cap
        )
        refusals = list(admission.refusals)
        if view.waiting:
            gone = {r.request_id for r in admission.admit}
            gone.update(f.request.request_id for f in refusals)
            queued = [r for r in view.waiting if r.request_id not in gone]
            refusals += shed_behind_queue(ctx, queued, admission.running, self.prompt_rate)
            gone.update(f.request.request_id for f in refusals)
            refusals += shed_overdue(ctx, [r for r in queued if r.request_id not in gone])
        drafts = plan_drafts(ctx, view, running)
        return StepPlan(
            run=(*running.decodes, *running.prompts),
            admit=tuple(admission.admit),
            preempt_order=SortedOnDemand(view.running, key=lambda r: _value(ctx, r)),
            token_budget=running.token_cap,  # draft tokens come on top of it
            refuse=tuple(refusals),
            downgrade=tuple(admission.downgrades),
            judged=tuple(admission.judged),
            draft_tokens=drafts,
        )

    def set_step_prior(self, prior: StepCoefficients) -> None:
        self.model.set_prior(prior)

    def learn(self, step: StepStats) -> None:
        """Learn what a step costs as the schedule feels it: from one step's start to the next
        one's while work was waiting, so the engine loop's time between steps (handing tokens
        to the server, the server's own thread) counts too; pacing by the step's compute time
        alone would fall short by that much. Learned one step late."""
        self.prompt_rate.observe(step.duration_s, step.num_prefill_tokens, step.num_waiting)
        prev, self._prev_step = self._prev_step, step
        if prev is None:
            return
        period = prev.duration_s
        if prev.num_running + prev.num_waiting > 0:  # no idle wait between the two steps
            gap = step.started_at - prev.started_at
            if prev.duration_s <= gap <= prev.duration_s + self.config.max_step_gap_s:
                period = gap
        self.model.observe(
            period,
            prev.num_decode_tokens,
            prev.num_prefill_tokens,
            prev.num_kv_tokens_read,
            prev.num_draft_tokens,
        )


def _value(ctx: PlanContext, r: RequestView) -> tuple[int, int, float]:
    """Preemption order, lowest value first: lowest rank, then cheapest, then the newest."""
    return (ctx.rank(r), ctx.level(r).output_price, -r.arrival_time)
