"""How a run ended and what it used: the result summary, printable and JSON."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum


class Outcome(StrEnum):
    FINISHED = "finished"  # the model called `finish`
    ANSWERED = "answered"  # the model replied without a tool call
    STOPPED = "stopped"  # a limit or an error ended the run (stop_reason says which)


class StopReason(StrEnum):
    STEPS = "step limit"
    WALL_TIME = "wall-time limit"
    BUDGET = "spending limit"
    ERROR = "factory error"
    LENGTH = "reply cut at max tokens"


@dataclass
class Totals:
    steps: int = 0  # model requests
    tool_calls: int = 0
    tool_errors: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    cost_micro_usd: int = 0

    @property
    def cost_usd(self) -> float:
        return self.cost_micro_usd / 1e6


@dataclass(frozen=True)
class FactoryBill:
    """The factory's own ledger for the run's task, read back at its end."""

    requests: int
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    amount_micro_usd: int

    @classmethod
    def from_usage_row(cls, row: dict) -> FactoryBill | None:
        try:
            return cls(*(int(row[k]) for k in (
                "requests", "prompt_tokens", "cached_tokens", "completion_tokens",
                "amount_micro_usd",
            )))
        except (KeyError, TypeError, ValueError):
            return None


@dataclass
class RunSummary:
    task_id: str
    model: str
    tier: str | None  # the tier the factory said it served (the last response's)
    outcome: Outcome
    stop_reason: StopReason | None
    detail: str  # the model's finish summary or last text, or what stopped the run
    totals: Totals
    wall_s: float
    limits: dict = field(default_factory=dict)
    # None: the endpoint keeps no per-task ledger (or had no row for the task yet). A request
    # abandoned at the wall-time limit may be billed here for tokens the runner never saw.
    factory_bill: FactoryBill | None = None

    @property
    def completed(self) -> bool:
        return self.outcome is not Outcome.STOPPED

    def headline(self) -> str:
        if self.outcome is Outcome.STOPPED:
            return f"stopped: {self.stop_reason}"
        return "finished" if self.outcome is Outcome.FINISHED else "answered without a tool call"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["outcome"] = str(self.outcome)
        d["stop_reason"] = str(self.stop_reason) if self.stop_reason else None
        d["totals"]["cost_usd"] = self.totals.cost_usd
        d["wall_s"] = round(self.wall_s, 3)
        return d
