"""The agent's sandbox: paths that stay inside one workspace, commands from an allowlist run
without network, time-limited and output-limited, in a clean environment."""

from tokenfactory.agent.sandbox.commands import CommandPolicy, CommandResult, CommandRunner
from tokenfactory.agent.sandbox.errors import SandboxError
from tokenfactory.agent.sandbox.isolation import NetworkIsolation
from tokenfactory.agent.sandbox.workspace import Workspace

__all__ = [
    "CommandPolicy",
    "CommandResult",
    "CommandRunner",
    "NetworkIsolation",
    "SandboxError",
    "Workspace",
]
