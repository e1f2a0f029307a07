"""Errors a caller can cause by submitting a bad request to the engine, and the engine's own
failures as its callers see them."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tokenfactory.engine.health import EngineHealth


class InvalidRequestError(ValueError):
    """The request cannot be served as given. `param` names the offending field."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.param = param
        self.code = code


class ContextLengthExceededError(InvalidRequestError):
    """Prompt (plus the room needed for at least one output token) exceeds the context window."""

    def __init__(self, message: str, param: str | None = "messages"):
        super().__init__(message, param=param, code="context_length_exceeded")


class EngineClosedError(RuntimeError):
    """The engine has shut down and accepts no more work."""


class EngineStepError(RuntimeError):
    """A step failed while this request was in the engine; the request was ended. The engine
    itself may still serve (see `EngineHealth`)."""


class EngineDeadError(EngineClosedError):
    """The engine stopped after failing steps and accepts no more work; `health` says why.

    A kind of `EngineClosedError`: code that only cares that no work is accepted keeps working.
    """

    def __init__(self, health: EngineHealth):
        super().__init__(f"the engine is dead: {health.reason}")
        self.health = health
