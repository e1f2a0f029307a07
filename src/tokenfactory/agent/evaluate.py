"""Run the task set at one or more tiers and report share solved, steps, tokens and cost."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from rich.table import Table

from tokenfactory.agent.runner import RunOptions, run_agent
from tokenfactory.agent.sandbox import NetworkIsolation, Workspace
from tokenfactory.agent.session import Connection, SessionError, new_task_id
from tokenfactory.agent.taskset import AgentTask


@dataclass(frozen=True)
class TaskResult:
    task: str
    tier: str
    solved: bool
    problems: list[str]  # what the checks found wrong; empty when solved
    outcome: str  # finished | answered | stopped: <reason>
    steps: int
    tool_calls: int
    tool_errors: int
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    cost_micro_usd: int
    wall_s: float
    task_id: str
    factory_billed_micro_usd: int | None  # the factory's ledger for the task, where it says


@dataclass(frozen=True)
class TierReport:
    tier: str
    tasks: int
    solved: int
    steps: int
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    cost_micro_usd: int
    wall_s: float

    @property
    def share_solved(self) -> float:
        return self.solved / self.tasks if self.tasks else 0.0


def evaluate_task(
    task: AgentTask,
    tier: str,
    conn: Connection,
    options: RunOptions,
    isolation: NetworkIsolation,
    transport=None,
    transcripts: Path | None = None,
) -> TaskResult:
    with tempfile.TemporaryDirectory(prefix=f"agent-{task.name}-") as tmp:
        workspace = Workspace(tmp)
        task.populate(workspace)
        task_id = new_task_id()
        run = run_agent(
            task.prompt, workspace, replace(conn, tier=tier), task_id, options,
            isolation=isolation, transport=transport,
        )
        problems = task.judge(workspace, run.commands)
    summary = run.summary
    if transcripts is not None:
        doc = {"summary": summary.to_dict(), "problems": problems, "messages": run.messages}
        path = transcripts / f"{task.name}-{tier}.json"
        path.write_text(json.dumps(doc, indent=2) + "\n")
    t = summary.totals
    outcome = str(summary.outcome) if summary.completed else f"stopped: {summary.stop_reason}"
    return TaskResult(
        task=task.name, tier=tier, solved=not problems, problems=problems, outcome=outcome,
        steps=t.steps, tool_calls=t.tool_calls, tool_errors=t.tool_errors,
        prompt_tokens=t.prompt_tokens, cached_tokens=t.cached_tokens,
        completion_tokens=t.completion_tokens, cost_micro_usd=t.cost_micro_usd,
        wall_s=round(summary.wall_s, 2), task_id=task_id,
        factory_billed_micro_usd=(
            summary.factory_bill.amount_micro_usd if summary.factory_bill else None
        ),
    )


def evaluate(
    tasks: list[AgentTask],
    tiers: list[str],
    conn: Connection,
    options: RunOptions,
    on_result: Callable[[TaskResult], None] = lambda r: None,
    isolation: NetworkIsolation | None = None,
    transport=None,
    concurrency: int = 1,
    transcripts: Path | None = None,
) -> list[TaskResult]:
    """Every task at every tier, in task order with the tiers alternating, so that a machine
    whose speed drifts during the run does not favour one tier; `concurrency` runs go at once
    (the factory batches them), results in the same order. `transcripts`: a directory that
    receives each run's conversation and summary as `<task>-<tier>.json`."""
    isolation = isolation or NetworkIsolation.probe()
    jobs = [(task, tier) for task in tasks for tier in tiers]

    def one(job: tuple[AgentTask, str]) -> TaskResult:
        task, tier = job
        try:
            result = evaluate_task(task, tier, conn, options, isolation, transport, transcripts)
        except SessionError as exc:
            raise SessionError(f"tier {tier}: {exc}") from None
        on_result(result)
        return result

    if concurrency <= 1:
        return [one(job) for job in jobs]
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        return list(pool.map(one, jobs))


def tier_reports(results: list[TaskResult], tiers: list[str]) -> list[TierReport]:
    out = []
    for tier in tiers:
        rows = [r for r in results if r.tier == tier]
        out.append(
            TierReport(
                tier=tier,
                tasks=len(rows),
                solved=sum(r.solved for r in rows),
                steps=sum(r.steps for r in rows),
                prompt_tokens=sum(r.prompt_tokens for r in rows),
                cached_tokens=sum(r.cached_tokens for r in rows),
                completion_tokens=sum(r.completion_tokens for r in rows),
                cost_micro_usd=sum(r.cost_micro_usd for r in rows),
                wall_s=round(sum(r.wall_s for r in rows), 2),
            )
        )
    return out


def results_table(results: list[TaskResult], tiers: list[str]) -> Table:
    table = Table(title="agent tasks by tier")
    table.add_column("task")
    for tier in tiers:
        table.add_column(f"{tier}\nsolved / steps / tokens / $", justify="right")
    by_task: dict[str, dict[str, TaskResult]] = {}
    for r in results:
        by_task.setdefault(r.task, {})[r.tier] = r
    for name, row in by_task.items():
        cells = []
        for tier in tiers:
            if tier not in row:
                cells.append("-")
                continue
            r = row[tier]
            mark = "[green]yes[/green]" if r.solved else "[red]no[/red]"
            tokens = r.prompt_tokens + r.completion_tokens
            cells.append(f"{mark} / {r.steps} / {tokens} / {r.cost_micro_usd / 1e6:.4f}")
        table.add_row(name, *cells)
    reports = tier_reports(results, tiers)
    table.add_section()
    table.add_row(
        "share solved / steps / tokens / $",
        *(
            f"{rep.solved}/{rep.tasks} ({rep.share_solved:.0%}) / {rep.steps} / "
            f"{rep.prompt_tokens + rep.completion_tokens} / {rep.cost_micro_usd / 1e6:.4f}"
            for rep in reports
        ),
    )
    return table


def report_json(results: list[TaskResult], tiers: list[str], meta: dict) -> dict:
    return {
        **meta,
        "tiers": [
            {**asdict(rep), "share_solved": round(rep.share_solved, 4)}
            for rep in tier_reports(results, tiers)
        ],
        "results": [asdict(r) for r in results],
    }
