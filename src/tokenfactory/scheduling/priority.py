"""vLLM-style strict priority: higher tier rank first, then arrival.

When KV blocks run short the lowest-rank, newest running request is preempted, so paid work
displaces free work. It only reorders: every carried request still advances one token per
step, at the same speed as its batch mates.
"""

from __future__ import annotations

from tokenfactory.scheduling.ordered import OrderedPolicy
from tokenfactory.scheduling.view import RequestView


def tier_rank(request: RequestView) -> int:
    """The request's tier rank (0 = free); a request without terms is the lowest tier."""
    return request.terms.rank if request.terms is not None else 0


class PriorityPolicy(OrderedPolicy):
    name = "priority"

    @staticmethod
    def key(request: RequestView) -> tuple[int, float]:
        return (-tier_rank(request), request.arrival_time)
