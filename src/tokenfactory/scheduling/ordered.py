"""Plans of the classic policies: everyone runs and is admitted, in one order; a preemption
takes the last in that order."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Mapping
from typing import Any

from tokenfactory.scheduling.policy import SchedulingPolicy
from tokenfactory.scheduling.speculation import UniformSpeculation
from tokenfactory.scheduling.step_model import StepCoefficients
from tokenfactory.scheduling.view import (
    RequestView,
    SchedulerView,
    SortedOnDemand,
    StepPlan,
)


def ordered_plan(
    view: SchedulerView,
    key: Callable[[RequestView], Any],
    draft_tokens: Mapping[str, int] | None = None,
) -> StepPlan:
    """Run and admit by `key` (smallest first); preempt the largest key first."""
    return StepPlan(
        run=tuple(sorted(view.running, key=key)),
        admit=tuple(sorted(view.waiting, key=key)),
        # Among equal keys the first in running order goes first.
        preempt_order=SortedOnDemand(view.running, key, reverse=True),
        draft_tokens=draft_tokens or {},
    )


class OrderedPolicy(SchedulingPolicy):
    """A policy that runs, admits and preempts in the order of `key`, with speculation under
    one rule for every request (`UniformSpeculation`)."""

    _speculation: UniformSpeculation | None = None

    @staticmethod
    @abstractmethod
    def key(request: RequestView) -> Any:
        """Smallest first: run and admitted first, preempted last."""

    @property
    def speculation(self) -> UniformSpeculation:
        if self._speculation is None:  # made on first use: subclasses need not call __init__
            self._speculation = UniformSpeculation()
        return self._speculation

    def plan(self, view: SchedulerView) -> StepPlan:
        return ordered_plan(view, self.key, self.speculation.plan(view))

    def set_step_prior(self, prior: StepCoefficients) -> None:
        self.speculation.set_prior(prior)
