"""The scheduling policy interface and the registry of policies by name.

A policy is one call per step: `plan(view) -> StepPlan` (`scheduling.view`). It reads an
immutable view and returns decisions as values; the engine's scheduler owns the mechanics
(token budget, KV blocks, preemption by recompute) and applies them. Between calls a policy
keeps nothing but what it learns about the engine (a step-time model, say): everything about a
request lives on the request, so a policy's decision is a function of the view and its model.
New policies subclass `SchedulingPolicy` and register a factory with `register_policy`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar

from tokenfactory.scheduling.step_model import StepCoefficients
from tokenfactory.scheduling.view import SchedulerView, StepPlan


class SchedulingPolicy(ABC):
    name: ClassVar[str]

    @abstractmethod
    def plan(self, view: SchedulerView) -> StepPlan:
        """This step's plan. `view.last_step` is the step run since the previous plan, for
        policies that learn what steps cost."""

    def set_step_prior(self, prior: StepCoefficients) -> None:  # noqa: B027 - optional
        """What a step costs on this hardware before any step ran (the capacity probe's
        figures), for policies that model step time. Configuration, not a per-step call."""


PolicyFactory = Callable[..., SchedulingPolicy]
_REGISTRY: dict[str, PolicyFactory] = {}


def register_policy(name: str, factory: PolicyFactory) -> None:
    if name in _REGISTRY:
        raise ValueError(f"scheduling policy {name!r} is already registered")
    _REGISTRY[name] = factory


def known_policies() -> list[str]:
    _register_shipped()
    return sorted(_REGISTRY)


def make_policy(name: str, **kwargs: Any) -> SchedulingPolicy:
    """Build a registered policy by name; keyword arguments go to its factory."""
    _register_shipped()
    factory = _REGISTRY.get(name)
    if factory is None:
        known = ", ".join(known_policies())
        raise ValueError(f"unknown scheduling policy {name!r}; known policies: {known}")
    return factory(**kwargs)


def _register_shipped() -> None:
    # Imported on first use: the shipped policies import this module.
    from tokenfactory.scheduling.fcfs import FcfsPolicy
    from tokenfactory.scheduling.priority import PriorityPolicy
    from tokenfactory.scheduling.tier.policy import TierPolicy

    for policy in (FcfsPolicy, PriorityPolicy, TierPolicy):
        _REGISTRY.setdefault(policy.name, policy)
