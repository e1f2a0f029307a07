"""One agent run end to end: session, sandbox, tool loop; the piece the CLI and eval share."""

from __future__ import annotations

from dataclasses import dataclass, field

from tokenfactory.agent.loop import AgentLoop, Limits, Observer, SilentObserver
from tokenfactory.agent.sandbox import CommandPolicy, CommandRunner, NetworkIsolation, Workspace
from tokenfactory.agent.session import Connection, open_session
from tokenfactory.agent.summary import FactoryBill, RunSummary
from tokenfactory.agent.tools import ToolBox


@dataclass(frozen=True)
class RunOptions:
    limits: Limits = Limits()
    policy: CommandPolicy = field(default_factory=CommandPolicy)
    tool_choice: str = "required"
    temperature: float | None = None


@dataclass
class RunResult:
    summary: RunSummary
    commands: CommandRunner  # for checks that run code in the same sandbox
    messages: list[dict]  # the whole conversation, tool results included


def listing(workspace: Workspace, limit: int = 50) -> str:
    """The workspace's files, for the first message (the model starts knowing what is there)."""
    names = sorted(
        workspace.relative(p) for p in workspace.root.rglob("*") if p.is_file()
    )
    shown = names[:limit] + ([f"... {len(names) - limit} more"] if len(names) > limit else [])
    return "\n".join(shown) if shown else "(empty)"


def run_agent(
    task: str,
    workspace: Workspace,
    conn: Connection,
    task_id: str,
    options: RunOptions = RunOptions(),
    observer: Observer | None = None,
    isolation: NetworkIsolation | None = None,
    transport=None,
) -> RunResult:
    """Run `task` in `workspace`."""
    session = open_session(conn, task_id, transport)
    commands = CommandRunner(
        workspace, options.policy, isolation if isolation else NetworkIsolation.probe()
    )
    try:
        loop = AgentLoop(
            client=session.client,
            toolbox=ToolBox(workspace, commands),
            pricing=session.pricing,
            model=session.model,
            limits=options.limits,
            tool_choice=options.tool_choice,
            temperature=options.temperature,
            observer=observer or SilentObserver(),
        )
        summary = loop.run(task, listing(workspace))
        row = session.client.task_usage()
        summary.factory_bill = FactoryBill.from_usage_row(row) if row else None
        return RunResult(summary, commands, loop.messages)
    finally:
        session.close()
