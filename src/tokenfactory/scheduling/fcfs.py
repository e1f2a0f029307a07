"""First come, first served: arrival order everywhere, the newest preempted first."""

from __future__ import annotations

from tokenfactory.scheduling.ordered import ordered_plan
from tokenfactory.scheduling.policy import SchedulingPolicy
from tokenfactory.scheduling.speculation import UniformSpeculation
from tokenfactory.scheduling.step_model import StepCoefficients
from tokenfactory.scheduling.view import RequestView, SchedulerView, StepPlan


class FcfsPolicy(SchedulingPolicy):
    name = "fcfs"

    def __init__(self) -> None:
        self.speculation = UniformSpeculation()

    def plan(self, view: SchedulerView) -> StepPlan:
        return ordered_plan(view, _arrival, self.speculation.plan(view))

    def set_step_prior(self, prior: StepCoefficients) -> None:
        self.speculation.set_prior(prior)


def _arrival(request: RequestView) -> float:
    return request.arrival_time
