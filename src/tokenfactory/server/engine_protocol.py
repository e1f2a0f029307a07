"""What the server asks of an engine, so one process's `AsyncEngine` and a fleet of replicas
behind a router serve through the same routes.

`ServingEngine` queues and streams requests; `EngineView` is the model's description and the
scheduler's state that routes, /v1/tiers, /metrics and the dashboard read. `Engine` and
`AsyncEngine` satisfy them as they are.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any, Protocol

from tokenfactory.engine.health import EngineHealth
from tokenfactory.engine.outputs import RequestOutput
from tokenfactory.engine.sampling_params import SamplingParams
from tokenfactory.scheduling.step_model import StepCoefficients
from tokenfactory.tiers import ServiceTerms


class ServingEngine(Protocol):
    @property
    def health(self) -> EngineHealth: ...

    @property
    def is_running(self) -> bool: ...

    async def add_request(
        self,
        prompt: str | list[int],
        params: SamplingParams | None = None,
        request_id: str | None = None,
        terms: ServiceTerms | None = None,
        cache_key: str | None = None,  # the client's prompt-cache key: where to route it
    ) -> str: ...

    def outputs(self, request_id: str) -> AsyncGenerator[RequestOutput, None]: ...

    def abort(self, request_id: str) -> None: ...

    def shutdown(self, timeout: float = 10.0) -> None: ...


class _Named(Protocol):
    @property
    def name(self) -> str: ...


class _Rate(Protocol):
    @property
    def rate(self) -> float | None: ...


class _Usage(Protocol):
    @property
    def usage(self) -> float: ...


class _StepLog(Protocol):
    def recent(self, n: int | None = None) -> list[Any]: ...


class SchedulerView(Protocol):
    @property
    def policy(self) -> _Named: ...

    @property
    def num_waiting(self) -> int: ...

    @property
    def num_running(self) -> int: ...

    @property
    def acceptance(self) -> _Rate: ...


class EngineView(Protocol):
    @property
    def model_name(self) -> str: ...

    @property
    def model_config(self) -> Any: ...

    @property
    def tokenizer(self) -> Any: ...

    @property
    def max_model_len(self) -> int: ...

    @property
    def device(self) -> Any: ...  # a torch.device

    @property
    def scheduler(self) -> SchedulerView: ...

    @property
    def block_manager(self) -> _Usage: ...

    @property
    def stats(self) -> _StepLog: ...

    @property
    def proposer(self) -> _Named | None: ...

    @property
    def step_prior(self) -> StepCoefficients | None: ...
