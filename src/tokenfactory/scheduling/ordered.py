"""Plans of the classic policies: everyone runs and is admitted, in one order; a preemption
takes the last in that order."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

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
