"""The console view of a run: each step as it happens, then the result summary."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tokenfactory.agent.client import ModelTurn, ToolCallRequest
from tokenfactory.agent.summary import Outcome, RunSummary, Totals
from tokenfactory.agent.tools import ToolOutcome

RESULT_PREVIEW_CHARS = 160


def _short(text: str, limit: int = RESULT_PREVIEW_CHARS) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


class ConsoleObserver:
    def __init__(self, console: Console) -> None:
        self.console = console

    def turn(self, step: int, turn: ModelTurn, cost_micro_usd: int, totals: Totals) -> None:
        c = self.console
        c.print(
            f"[bold cyan]step {step}[/bold cyan] [dim]"
            f"+{turn.usage.prompt_tokens} prompt ({turn.usage.cached_tokens} cached), "
            f"+{turn.usage.completion_tokens} completion, ${cost_micro_usd / 1e6:.6f}; so far "
            f"{totals.prompt_tokens + totals.completion_tokens} tokens, "
            f"${totals.cost_usd:.6f}[/dim]"
        )
        if turn.text.strip():
            c.print(f"  [green]model:[/green] {escape(_short(turn.text, 400))}")
        for call in turn.tool_calls:
            c.print(f"  [yellow]call[/yellow] {call.name}({escape(_short(call.arguments))})")

    def tool(self, step: int, call: ToolCallRequest, outcome: ToolOutcome) -> None:
        style = "dim" if outcome.ok else "red"
        self.console.print(f"    [{style}]-> {escape(_short(outcome.text))}[/{style}]")


def print_summary(console: Console, summary: RunSummary) -> None:
    t = summary.totals
    color = "red" if summary.outcome is Outcome.STOPPED else "green"
    table = Table(show_header=False, box=None, padding=(0, 2))
    table.add_row("result", f"[{color}]{escape(summary.headline())}[/{color}]")
    if summary.detail:
        table.add_row("detail", escape(_short(summary.detail, 300)))
    table.add_row("task id", summary.task_id)
    table.add_row("model / tier", f"{summary.model} / {summary.tier or '?'}")
    table.add_row("steps", f"{t.steps} requests, {t.tool_calls} tool calls "
                           f"({t.tool_errors} refused or failed)")
    table.add_row("tokens", f"{t.prompt_tokens} prompt ({t.cached_tokens} cached), "
                            f"{t.completion_tokens} completion")
    table.add_row("cost", f"${t.cost_usd:.6f}")
    bill = summary.factory_bill
    if bill is not None:
        same = bill.amount_micro_usd == t.cost_micro_usd and bill.requests == t.steps
        note = "[green]matches[/green]" if same else "[yellow]differs[/yellow]"
        table.add_row("factory billed", f"${bill.amount_micro_usd / 1e6:.6f} for "
                                        f"{bill.requests} requests ({note})")
    table.add_row("wall time", f"{summary.wall_s:.1f} s")
    console.print(table)
