"""vLLM-style strict priority: higher tier rank first, then arrival.

When KV blocks run short the lowest-rank, newest running request is preempted, so paid work
displaces free work. It only reorders: every carried request still advances one token per
step, at the same speed as its batch mates.
"""

from __future__ import annotations

from tokenfactory.scheduling.ordered import ordered_plan
from tokenfactory.scheduling.policy import SchedulingPolicy
from tokenfactory.scheduling.speculation import UniformSpeculation
from tokenfactory.scheduling.step_model import StepCoefficients
from tokenfactory.scheduling.view import RequestView, SchedulerView, StepPlan


def tier_rank(request: RequestView) -> int:
    """The request's tier rank (0 = free); a request without terms is the lowest tier."""
    return request.terms.rank if request.terms is not None else 0


class PriorityPolicy(SchedulingPolicy):
    name = "priority"

    def __init__(self) -> None:
        self.speculation = UniformSpeculation()

    def plan(self, view: SchedulerView) -> StepPlan:
        return ordered_plan(view, _priority_key, self.speculation.plan(view))

    def set_step_prior(self, prior: StepCoefficients) -> None:
        self.speculation.set_prior(prior)


def _priority_key(request: RequestView) -> tuple[int, float]:
    return (-tier_rank(request), request.arrival_time)
