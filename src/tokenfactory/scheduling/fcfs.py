"""First come, first served: arrival order everywhere, the newest preempted first."""

from __future__ import annotations

from tokenfactory.scheduling.ordered import ordered_plan
from tokenfactory.scheduling.policy import SchedulingPolicy
from tokenfactory.scheduling.view import RequestView, SchedulerView, StepPlan


class FcfsPolicy(SchedulingPolicy):
    name = "fcfs"

    def plan(self, view: SchedulerView) -> StepPlan:
        return ordered_plan(view, _arrival)


def _arrival(request: RequestView) -> float:
    return request.arrival_time
