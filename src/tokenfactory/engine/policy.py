"""Scheduling policies: who runs, who is admitted and who is preempted.

The scheduler owns the mechanics (token budget, KV blocks, preemption by recompute); a policy
only orders and filters sequences. New policies subclass `SchedulingPolicy` and register a
factory with `register_policy`, so they plug in without touching the scheduler or the runner.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar

from tokenfactory.engine.sequence import Sequence


class SchedulingPolicy(ABC):
    """Interface the scheduler calls each step. Lists passed in may be reordered freely."""

    name: ClassVar[str]

    @abstractmethod
    def order_running(self, running: list[Sequence], now: float) -> list[Sequence]:
        """Running sequences to serve this step, in order; any left out skip this step."""

    @abstractmethod
    def order_waiting(self, waiting: list[Sequence], now: float) -> list[Sequence]:
        """Waiting sequences in the order they should be admitted."""

    def may_admit(self, seq: Sequence, running: list[Sequence], now: float) -> bool:
        """Admission control: False keeps `seq` waiting this step (others may still go)."""
        return True

    @abstractmethod
    def preemption_victim(self, candidates: list[Sequence]) -> Sequence:
        """The candidate of lowest value, preempted first when KV blocks run out."""

    def set_limits(self, max_num_seqs: int) -> None:  # noqa: B027 - optional hook
        """Told the engine's limits once, when the scheduler is built."""

    def see_waiting(self, waiting: list[Sequence], now: float) -> None:  # noqa: B027
        """Told the waiting queue just before `order_running`, for policies that weigh
        waiting work against running work (optional hook, no-op by default)."""

    def set_step_prior(self, prior: Any) -> None:  # noqa: B027 - optional hook
        """Told what a step costs on this hardware before any step ran (`StepCoefficients`
        from the capacity probe), for policies that model step time."""

    def on_step(self, stats: Any) -> None:  # noqa: B027 - optional hook, no-op by default
        """Told about every finished step (for policies that pace or adapt)."""

    def step_token_budget(self, now: float) -> int | None:
        """A cap on this step's tokens, asked right after `order_running` (None: no cap).

        Pacing policies use it to keep a step short enough for the fastest promise present;
        the scheduler applies it only with chunked prefill, so a whole prompt always fits.
        """
        return None

    def shed(self, seq: Sequence, running: list[Sequence], now: float) -> float | None:
        """Called for a request on arrival that `may_admit` refused: a number of seconds
        (the Retry-After) ends it at once as shed; None lets it wait. Default: never shed."""
        return None

    def shed_queued(
        self, waiting: list[Sequence], running: list[Sequence], now: float
    ) -> list[tuple[Sequence, float]]:
        """Called once a step after admission with the requests still waiting, including
        those the step's budget never reached: (request, Retry-After seconds) for each fresh
        arrival to end at once as shed. Default: none."""
        return []


class FcfsPolicy(SchedulingPolicy):
    """First come, first served: arrival order everywhere, newest preempted first."""

    name = "fcfs"

    def order_running(self, running: list[Sequence], now: float) -> list[Sequence]:
        # Stable sort on nearly sorted input: O(n) in practice.
        return sorted(running, key=_arrival)

    def order_waiting(self, waiting: list[Sequence], now: float) -> list[Sequence]:
        return sorted(waiting, key=_arrival)

    def preemption_victim(self, candidates: list[Sequence]) -> Sequence:
        return max(candidates, key=_arrival)


def _arrival(seq: Sequence) -> float:
    return seq.arrival_time


def tier_rank(seq: Sequence) -> int:
    """The request's tier rank (0 = free); requests without metadata are the lowest tier."""
    rank = seq.metadata.get("tier_rank")
    return int(rank) if isinstance(rank, int | float) and not isinstance(rank, bool) else 0


class PriorityPolicy(SchedulingPolicy):
    """vLLM-style strict priority: higher tier rank first, then arrival.

    When KV blocks run short the lowest-rank, newest running request is preempted, so paid
    work displaces free work. It only reorders: every carried request still advances one
    token per step, at the same speed as its batch mates.
    """

    name = "priority"

    def order_running(self, running: list[Sequence], now: float) -> list[Sequence]:
        return sorted(running, key=_priority_key)

    def order_waiting(self, waiting: list[Sequence], now: float) -> list[Sequence]:
        return sorted(waiting, key=_priority_key)

    def preemption_victim(self, candidates: list[Sequence]) -> Sequence:
        return max(candidates, key=_priority_key)


def _priority_key(seq: Sequence) -> tuple[int, float]:
    return (-tier_rank(seq), seq.arrival_time)


PolicyFactory = Callable[..., SchedulingPolicy]
_REGISTRY: dict[str, PolicyFactory] = {}


def register_policy(name: str, factory: PolicyFactory) -> None:
    if name in _REGISTRY:
        raise ValueError(f"scheduling policy {name!r} is already registered")
    _REGISTRY[name] = factory


def known_policies() -> list[str]:
    return sorted(_REGISTRY)


def make_policy(name: str, **kwargs: Any) -> SchedulingPolicy:
    """Build a registered policy by name; keyword arguments go to its factory."""
    factory = _REGISTRY.get(name)
    if factory is None:
        known = ", ".join(known_policies())
        raise ValueError(f"unknown scheduling policy {name!r}; known policies: {known}")
    return factory(**kwargs)


def _tier_policy(**kwargs: Any) -> SchedulingPolicy:
    from tokenfactory.engine.tier_policy import TierPolicy  # it imports this module

    return TierPolicy(**kwargs)


register_policy(FcfsPolicy.name, FcfsPolicy)
register_policy(PriorityPolicy.name, PriorityPolicy)
register_policy("tier", _tier_policy)
