"""Errors a caller can cause by submitting a bad request to the engine."""


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
