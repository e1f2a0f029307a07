"""The fleet seen as one engine: the model's description from a replica, the scheduler's
state summed over the replicas' last stats (an `EngineView` for the server)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from tokenfactory.fleet.client import FleetClient
from tokenfactory.fleet.messages import EngineDescription
from tokenfactory.scheduling.step_model import StepCoefficients


@dataclass(frozen=True)
class _Name:
    name: str


class _FleetScheduler:
    def __init__(self, fleet: FleetClient, policy: str):
        self._fleet = fleet
        self.policy = _Name(policy)
        self.acceptance = _FleetAcceptance(fleet)

    @property
    def num_waiting(self) -> int:
        return sum(r.stats.waiting for r in self._fleet.replicas if r.stats and r.available)

    @property
    def num_running(self) -> int:
        return sum(r.stats.running for r in self._fleet.replicas if r.stats and r.available)


class _FleetAcceptance:
    def __init__(self, fleet: FleetClient):
        self._fleet = fleet

    @property
    def rate(self) -> float | None:
        rates = [r.stats.acceptance for r in self._fleet.replicas if r.stats and r.available]
        known = [x for x in rates if x is not None]
        return sum(known) / len(known) if known else None


class _FleetBlocks:
    def __init__(self, fleet: FleetClient):
        self._fleet = fleet

    @property
    def usage(self) -> float:
        """The mean share of KV blocks in use over the replicas that answer."""
        uses = [r.stats.kv_usage for r in self._fleet.replicas if r.stats and r.available]
        return sum(uses) / len(uses) if uses else 0.0


class _FleetSteps:
    """Recent steps of one replica (they run the same model on the same hardware)."""

    def __init__(self, fleet: FleetClient):
        self._fleet = fleet

    def recent(self, n: int | None = None) -> list[Any]:
        return self._fleet.recent_steps(512 if n is None else n)


class FleetView:
    def __init__(self, description: EngineDescription, fleet: FleetClient):
        d = description
        self._fleet = fleet
        self.model_name = d.model_name
        self.model_config = d.model_config
        self.tokenizer = d.tokenizer
        self.max_model_len = d.max_model_len
        self.device = torch.device(d.device)
        self.scheduler = _FleetScheduler(fleet, d.policy)
        self.block_manager = _FleetBlocks(fleet)
        self.stats = _FleetSteps(fleet)
        self.proposer = _Name(d.proposer) if d.proposer is not None else None

    @property
    def step_prior(self) -> StepCoefficients | None:
        return self._fleet.step_prior
