"""`tokenfactory agent`: run one task (`agent TASK --workspace DIR`, short for `agent run`) or
the shipped task set at several tiers (`agent eval`). Thin: the logic lives in the modules."""

from __future__ import annotations

import json
import platform
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from typer.core import TyperGroup

from tokenfactory.agent.evaluate import evaluate, report_json, results_table
from tokenfactory.agent.live import ConsoleObserver, print_summary
from tokenfactory.agent.loop import Limits
from tokenfactory.agent.runner import RunOptions, run_agent
from tokenfactory.agent.sandbox import CommandPolicy, NetworkIsolation, SandboxError, Workspace
from tokenfactory.agent.sandbox.commands import DEFAULT_ALLOW
from tokenfactory.agent.session import LOCAL_FACTORY_URL, Connection, SessionError, new_task_id
from tokenfactory.agent.summary import Outcome
from tokenfactory.agent.taskset import TaskFileError, load_tasks, select_tasks


class _DefaultRun(TyperGroup):
    """`agent TASK ...` means `agent run TASK ...`: a first word that is no subcommand is a task."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:  # click's Context
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


agent_app = typer.Typer(
    cls=_DefaultRun,
    help="An agent that works on files through any OpenAI-compatible factory, sandboxed.",
    no_args_is_help=True,
)
err = Console(stderr=True)
Opt = typer.Option

BaseUrlOpt = Annotated[str, Opt(help="Factory root (…/v1 accepted)")]
KeyOpt = Annotated[
    str | None,
    Opt(help="Bearer key (default: $OPENAI_API_KEY, else the local factory's key for --tier)"),
]
TierKeysOpt = Annotated[
    str | None,
    Opt(help="JSON file {tier: key} (e.g. a factory's local-keys.json): each tier's own key"),
]
ModelOpt = Annotated[str | None, Opt(help="Model (default: the endpoint's first)")]
PricesOpt = Annotated[
    str | None, Opt(help="INPUT:CACHED:OUTPUT USD per Mtok, for endpoints without /v1/tiers")
]
StepsOpt = Annotated[int, Opt(min=1, help="Most model requests")]
WallOpt = Annotated[float, Opt(min=0.1, help="Most wall-clock seconds")]
BudgetOpt = Annotated[float, Opt(min=0.0, help="Most USD to spend")]
MaxTokensOpt = Annotated[int, Opt(min=1, help="Longest reply per request, in tokens")]
ToolChoiceOpt = Annotated[str, Opt(help="required (end through the finish tool) or auto")]
AllowOpt = Annotated[
    list[str] | None,
    Opt("--allow", help="Allowed command pattern, e.g. 'make test ...' (repeatable; replaces "
                        "the default list)"),
]
CmdTimeoutOpt = Annotated[float, Opt(min=0.1, help="Seconds one command may run")]
CmdOutputOpt = Annotated[int, Opt(min=100, help="Bytes of command output kept")]
TemperatureOpt = Annotated[float | None, Opt(min=0.0, help="Sampling temperature")]


def _options(
    max_steps: int, max_wall_s: float, budget: float, max_tokens: int, tool_choice: str,
    allow: list[str] | None, command_timeout: float, command_output: int,
    temperature: float | None,
) -> RunOptions:
    if tool_choice not in ("required", "auto"):
        raise typer.BadParameter("must be required or auto", param_hint="--tool-choice")
    try:
        policy = CommandPolicy.from_patterns(
            allow or list(DEFAULT_ALLOW), timeout_s=command_timeout,
            max_output_bytes=command_output,
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--allow") from None
    limits = Limits(max_steps, max_wall_s, round(budget * 1e6), max_tokens)
    return RunOptions(limits, policy, tool_choice, temperature)


@agent_app.command("run")
def run_command(
    task: Annotated[str, typer.Argument(help="What the agent should do")],
    workspace: Annotated[Path, Opt(help="Directory the agent works in (and only in)")],
    base_url: BaseUrlOpt = LOCAL_FACTORY_URL,
    api_key: KeyOpt = None,
    tier_keys: TierKeysOpt = None,
    model: ModelOpt = None,
    tier: Annotated[str | None, Opt(help="service_tier to ask for")] = None,
    prices: PricesOpt = None,
    task_id: Annotated[str | None, Opt(help="X-Task-Id for every request (default: new)")] = None,
    max_steps: StepsOpt = 20,
    max_wall_s: WallOpt = 600.0,
    budget: BudgetOpt = 1.0,
    max_tokens: MaxTokensOpt = 512,
    tool_choice: ToolChoiceOpt = "required",
    allow: AllowOpt = None,
    command_timeout: CmdTimeoutOpt = 20.0,
    command_output: CmdOutputOpt = 8000,
    temperature: TemperatureOpt = None,
    json_out: Annotated[Path | None, Opt("--json", help="Write the summary as JSON here")] = None,
) -> None:
    """Work on TASK in --workspace with tools, printing each step; ends with a summary."""
    options = _options(max_steps, max_wall_s, budget, max_tokens, tool_choice, allow,
                       command_timeout, command_output, temperature)
    try:
        ws = Workspace(workspace)
    except SandboxError as exc:
        raise typer.BadParameter(str(exc), param_hint="--workspace") from None
    isolation = NetworkIsolation.probe()
    if not isolation.available:
        err.print(f"[yellow]note:[/yellow] the run tool is off: {isolation.unavailable_reason}")
    conn = Connection(base_url, api_key, model, tier, prices, tier_keys)
    tid = task_id or new_task_id()
    err.print(f"[bold]task[/bold] {tid} in {ws.root}")
    try:
        summary = run_agent(
            task, ws, conn, tid, options, ConsoleObserver(err), isolation
        ).summary
    except SessionError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    print_summary(err, summary)
    if json_out is not None:
        json_out.write_text(json.dumps(summary.to_dict(), indent=2) + "\n")
    raise typer.Exit(0 if summary.outcome is not Outcome.STOPPED else 1)


@agent_app.command("eval")
def eval_command(
    tiers: Annotated[str, Opt(help="Comma-separated service tiers to compare")] = "standard",
    tasks: Annotated[str | None, Opt(help="Comma-separated task names (default: all)")] = None,
    tasks_dir: Annotated[Path | None, Opt(help="Directory of task TOML files")] = None,
    base_url: BaseUrlOpt = LOCAL_FACTORY_URL,
    api_key: KeyOpt = None,
    tier_keys: TierKeysOpt = None,
    model: ModelOpt = None,
    prices: PricesOpt = None,
    max_steps: StepsOpt = 10,
    max_wall_s: WallOpt = 300.0,
    budget: BudgetOpt = 1.0,
    max_tokens: MaxTokensOpt = 256,
    tool_choice: ToolChoiceOpt = "required",
    allow: AllowOpt = None,
    command_timeout: CmdTimeoutOpt = 20.0,
    command_output: CmdOutputOpt = 8000,
    temperature: TemperatureOpt = 0.0,
    concurrency: Annotated[int, Opt(min=1, help="Task runs at once")] = 1,
    transcripts: Annotated[
        Path | None, Opt(help="Directory for each run's conversation (<task>-<tier>.json)")
    ] = None,
    json_out: Annotated[Path | None, Opt("--json", help="Write results as JSON here")] = None,
) -> None:
    """Run the shipped file tasks at each tier: share solved, steps, tokens and cost."""
    options = _options(max_steps, max_wall_s, budget, max_tokens, tool_choice, allow,
                       command_timeout, command_output, temperature)
    tier_list = [t.strip() for t in tiers.split(",") if t.strip()]
    try:
        chosen = select_tasks(load_tasks(tasks_dir), tasks)
    except TaskFileError as exc:
        raise typer.BadParameter(str(exc), param_hint="--tasks") from None
    conn = Connection(base_url, api_key, model, None, prices, tier_keys)

    def progress(r) -> None:
        mark = "[green]solved[/green]" if r.solved else f"[red]not solved[/red] ({r.outcome})"
        err.print(f"{r.task} @ {r.tier}: {mark}, {r.steps} steps, "
                  f"${r.cost_micro_usd / 1e6:.4f}, {r.wall_s:.1f} s")

    started = datetime.now(UTC)
    try:
        if transcripts is not None:
            transcripts.mkdir(parents=True, exist_ok=True)
        results = evaluate(chosen, tier_list, conn, options, progress,
                           concurrency=concurrency, transcripts=transcripts)
    except SessionError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    Console().print(results_table(results, tier_list))
    if json_out is not None:
        meta = {
            "command": "tokenfactory agent eval",
            "base_url": base_url,
            "started_at": started.isoformat(timespec="seconds"),
            "machine": platform.node(),
            "commit": _commit(),
            "options": {"max_steps": max_steps, "max_wall_s": max_wall_s, "budget_usd": budget,
                        "max_tokens": max_tokens, "tool_choice": tool_choice,
                        "temperature": temperature, "concurrency": concurrency},
        }
        json_out.write_text(json.dumps(report_json(results, tier_list, meta), indent=2) + "\n")


def _commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=5, cwd=Path(__file__).parent)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None
