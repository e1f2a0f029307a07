"""The one failure a tool call can meet inside the sandbox."""


class SandboxError(Exception):
    """A tool call the sandbox refuses or cannot complete; its message goes back to the model
    as the tool's result, so it says what was wrong in plain words."""
