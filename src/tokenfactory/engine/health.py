"""Engine health: whether the step loop can still serve, and why it cannot.

A step that raises ends the requests it held; one failure is not fatal (a bad batch, a
transient device error). Several failures in a row mean the engine cannot make progress, so
it is marked dead: it refuses new work at once instead of taking requests only to fail them.
A successful step resets the run. Dead is final: recovering means restarting the process.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from enum import StrEnum

DEFAULT_MAX_CONSECUTIVE_FAILURES = 3


class EngineState(StrEnum):
    HEALTHY = "healthy"
    DEAD = "dead"


@dataclass(frozen=True)
class EngineHealth:
    """A snapshot; the loop thread replaces it whole, so readers on other threads never see
    half an update."""

    state: EngineState = EngineState.HEALTHY
    consecutive_failures: int = 0
    failed_steps: int = 0  # since start, for the metrics counter
    reason: str | None = None  # why it is dead, fit for clients (no internals)
    last_error: str | None = None  # the last failure, for operators (/ready, logs)
    dead_since: float | None = None  # wall-clock time.time()
    # A fleet's replicas are restarted by Ray, so "dead" there lasts until one is back; one
    # engine in process never recovers without a server restart.
    restarts_itself: bool = False

    @property
    def is_dead(self) -> bool:
        return self.state is EngineState.DEAD

    def after_success(self) -> EngineHealth:
        if self.consecutive_failures == 0:
            return self
        return replace(self, consecutive_failures=0)

    def after_failure(self, exc: BaseException, max_consecutive: int) -> EngineHealth:
        """Count a failed step; dead once `max_consecutive` failed in a row."""
        n = self.consecutive_failures + 1
        counted = replace(
            self,
            consecutive_failures=n,
            failed_steps=self.failed_steps + 1,
            last_error=describe(exc),
        )
        if n < max_consecutive:
            return counted
        what = "an engine step failed" if n == 1 else f"{n} consecutive engine steps failed"
        return counted.died(what, exc)

    @property
    def remedy(self) -> str:
        """What an operator should do, for /ready and the logs."""
        if self.restarts_itself:
            return "Replicas restart on their own: retry shortly; restart the server only if " \
                "/ready stays dead."
        return "Restart the server."

    @property
    def until(self) -> str:
        """How long clients are refused, for their error message."""
        if self.restarts_itself:
            return "until an engine replica is back (they restart on their own)"
        return "until the server is restarted"

    def died(self, reason: str, exc: BaseException | None = None) -> EngineHealth:
        if self.is_dead:
            return self
        return replace(
            self,
            state=EngineState.DEAD,
            reason=reason,
            last_error=describe(exc) if exc is not None else self.last_error,
            dead_since=time.time(),
        )


def describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__
