"""First come, first served: arrival order everywhere, the newest preempted first."""

from __future__ import annotations

from tokenfactory.scheduling.ordered import OrderedPolicy
from tokenfactory.scheduling.view import RequestView


class FcfsPolicy(OrderedPolicy):
    name = "fcfs"

    @staticmethod
    def key(request: RequestView) -> float:
        return request.arrival_time
