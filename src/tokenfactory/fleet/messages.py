"""What replicas and the front send each other: plain dataclasses, pickled by Ray.

Engine errors cross as `ReplicaError` data rather than as exceptions, so each arrives with
its fields (a context-length error's parameter, a dead engine's reason) and is raised on the
front as the exception the server already answers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from tokenfactory.engine.errors import (
    ContextLengthExceededError,
    EngineClosedError,
    EngineDeadError,
    EngineStepError,
    InvalidRequestError,
)
from tokenfactory.engine.outputs import RequestOutput


@dataclass(frozen=True)
class ReplicaError:
    kind: str  # "context_length", "invalid", "step" or "closed"
    message: str
    param: str | None = None

    @classmethod
    def of(cls, exc: Exception, queuing: bool = False) -> ReplicaError:
        """`queuing`: the replica refused a new request (a closed one is then "closed", and
        the front tries another replica)."""
        param = getattr(exc, "param", None)
        if isinstance(exc, ContextLengthExceededError):
            return cls("context_length", str(exc), param)
        if isinstance(exc, InvalidRequestError):
            return cls("invalid", str(exc), param)
        if isinstance(exc, EngineStepError | EngineDeadError) and not queuing:
            # Mid-stream, a replica whose engine died failed this request like a bad step;
            # the fleet still serves.
            return cls("step", str(exc))
        if isinstance(exc, EngineClosedError):
            return cls("closed", str(exc))
        raise exc

    def exception(self) -> Exception:
        if self.kind == "context_length":
            return ContextLengthExceededError(self.message, self.param)
        if self.kind == "invalid":
            return InvalidRequestError(self.message, self.param)
        if self.kind == "closed":
            return EngineClosedError(self.message)
        return EngineStepError(self.message)


@dataclass(frozen=True)
class ChannelBatch:
    """What a replica made for one front since the front's last read: every request's new
    deltas, in order, and the requests whose streams ended there (with the error that ended
    one, or None for a finish or an abort). One batch per read, not per request: a streamed
    Ray object costs about a millisecond of CPU, so per-request objects at 32 streams took a
    sixth of this machine's two cores."""

    outputs: list[RequestOutput]
    ended: dict[str, ReplicaError | None]
    sent_at: float  # the replica's time.monotonic() when sent: the front maps times by it


@dataclass(frozen=True)
class EngineDescription:
    """What the front needs of the model without loading it: names, limits, tokenizer."""

    model_name: str
    model_config: Any
    tokenizer: Any
    max_model_len: int
    device: str  # "cuda:0", "cpu"
    policy: str
    proposer: str | None


@dataclass(frozen=True)
class ReplicaStats:
    """A replica's state now, for the router, /metrics and the fleet's view."""

    pid: int
    node: str
    started_at: float  # time.time() of this incarnation: a restart changes it
    healthy: bool
    health_reason: str | None
    failed_steps: int
    waiting: int
    running: int
    kv_usage: float
    has_step_prior: bool
    predicted_step_s: float  # the step-time model's cost of a decode step at today's batch
    acceptance: float | None
    requests_served: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def this_process() -> tuple[int, str]:
    return os.getpid(), os.uname().nodename
