"""The tool loop: ask the model, run the tool calls it returns, feed the results back, repeat
until it finishes, answers without a call, or a limit (steps, wall time, spending) stops it."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Protocol

from tokenfactory.agent.client import ChatClient, FactoryError, ModelTurn, ToolCallRequest
from tokenfactory.agent.pricing import Pricing
from tokenfactory.agent.summary import Outcome, RunSummary, StopReason, Totals
from tokenfactory.agent.tools import TOOL_SCHEMAS, ToolBox, ToolOutcome

SYSTEM_PROMPT = (
    "You are an agent working on files in a workspace directory. Use the tools to read, "
    "write, list and search files and to run allowed commands; paths are relative to the "
    "workspace. Do the task step by step with tool calls. When the task is done, call "
    "finish with a one-line summary."
)
CHARS_PER_TOKEN_FLOOR = 2  # few tokenizers pack fewer characters in a token: a safe estimate
MAX_RETRIES = 3  # per request, only when the endpoint says when to come back (Retry-After)


@dataclass(frozen=True)
class Limits:
    max_steps: int = 20  # model requests
    max_wall_s: float = 600.0
    budget_micro_usd: int = 1_000_000  # $1
    max_tokens: int = 512  # longest reply per request


class Observer(Protocol):
    """Live view of a run (the console printer, or a recorder in tests)."""

    def turn(self, step: int, turn: ModelTurn, cost_micro_usd: int, totals: Totals) -> None: ...

    def tool(self, step: int, call: ToolCallRequest, outcome: ToolOutcome) -> None: ...


class SilentObserver:
    def turn(self, step: int, turn: ModelTurn, cost_micro_usd: int, totals: Totals) -> None:
        pass

    def tool(self, step: int, call: ToolCallRequest, outcome: ToolOutcome) -> None:
        pass


@dataclass
class AgentLoop:
    client: ChatClient
    toolbox: ToolBox
    pricing: Pricing
    model: str
    limits: Limits = Limits()
    tool_choice: str = "required"
    temperature: float | None = None
    observer: Observer = field(default_factory=SilentObserver)
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    messages: list[dict] = field(default_factory=list, init=False)
    _last_size: tuple[int, int] = field(default=(0, 0), init=False)  # (tokens, chars) sent

    def run(self, task: str, workspace_listing: str = "") -> RunSummary:
        start = self.clock()
        self.toolbox.time_left = lambda: self.limits.max_wall_s - (self.clock() - start)
        user = task if not workspace_listing else (
            f"{task}\n\nFiles in the workspace:\n{workspace_listing}"
        )
        self.messages = [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": user},
        ]
        self._last_size = (0, 0)
        totals = Totals()
        tier: str | None = None

        def end(outcome: Outcome, reason: StopReason | None, detail: str) -> RunSummary:
            return RunSummary(
                task_id=self.client.task_id, model=self.model, tier=tier, outcome=outcome,
                stop_reason=reason, detail=detail, totals=totals,
                wall_s=self.clock() - start, limits=asdict(self.limits),
            )

        while True:
            left = self.limits.max_wall_s - (self.clock() - start)
            limit = self._limit_reached(totals, left)
            if limit is not None:
                return end(Outcome.STOPPED, *limit)
            try:
                turn = self._request(start)
            except FactoryError as exc:
                out_of_time = self.clock() - start >= self.limits.max_wall_s
                return end(Outcome.STOPPED,
                           StopReason.WALL_TIME if out_of_time else StopReason.ERROR, str(exc))
            tier = turn.service_tier or tier
            self._count(turn, totals)
            self.messages.append(turn.assistant_message())
            if not turn.tool_calls:
                if turn.finish_reason == "length":
                    return end(Outcome.STOPPED, StopReason.LENGTH, turn.text)
                return end(Outcome.ANSWERED, None, turn.text)
            for call in turn.tool_calls:
                outcome = self.toolbox.call(call.name, call.arguments)
                totals.tool_calls += 1
                totals.tool_errors += 0 if outcome.ok else 1
                self.observer.tool(totals.steps, call, outcome)
                if outcome.finished:
                    return end(Outcome.FINISHED, None, outcome.text)
                self.messages.append(
                    {"role": "tool", "tool_call_id": call.call_id, "content": outcome.text}
                )

    def _request(self, start: float) -> ModelTurn:
        """One model request; a 429 or 503 with Retry-After is retried after that wait, a few
        times, while the wall-time limit allows."""
        retries = 0
        while True:
            left = self.limits.max_wall_s - (self.clock() - start)
            try:
                return self.client.complete(
                    self.model, self.messages, list(TOOL_SCHEMAS), self.tool_choice,
                    self.limits.max_tokens, left, self.temperature,
                )
            except FactoryError as exc:
                wait = exc.retry_after_s
                if wait is None or retries == MAX_RETRIES or wait >= left:
                    raise
            retries += 1
            self.sleep(wait)

    def _limit_reached(self, totals: Totals, wall_left_s: float) -> tuple[StopReason, str] | None:
        """The limit that forbids another request, with what it says, or None."""
        if wall_left_s <= 0:
            return StopReason.WALL_TIME, f"{self.limits.max_wall_s:g} s of wall time used"
        if totals.steps >= self.limits.max_steps:
            return StopReason.STEPS, f"{self.limits.max_steps} model requests made"
        worst = self._worst_next_cost()
        if totals.cost_micro_usd + worst > self.limits.budget_micro_usd:
            return StopReason.BUDGET, (
                f"spent ${totals.cost_usd:.6f} of ${self.limits.budget_micro_usd / 1e6:.6f}; "
                f"the next request could cost up to ${worst / 1e6:.6f}"
            )
        return None

    def _count(self, turn: ModelTurn, totals: Totals) -> None:
        """Add one response's tokens and cost to the totals, and show the step."""
        cost = self.pricing.cost_micro_usd(turn.usage, turn.service_tier)
        totals.steps += 1
        totals.prompt_tokens += turn.usage.prompt_tokens
        totals.cached_tokens += turn.usage.cached_tokens
        totals.completion_tokens += turn.usage.completion_tokens
        totals.cost_micro_usd += cost
        self._last_size = (turn.usage.prompt_tokens + turn.usage.completion_tokens, self._chars())
        self.observer.turn(totals.steps, turn, cost, totals)

    def _chars(self) -> int:
        return len(json.dumps(self.messages)) + len(json.dumps(TOOL_SCHEMAS))

    def _worst_next_cost(self) -> int:
        """An upper estimate of the next request's price, so the run stops before a request
        that could overrun the budget rather than after it: the last request's real tokens
        plus what was appended since, or the whole conversation's size, whichever is more."""
        last_tokens, last_chars = self._last_size
        chars = self._chars()
        prompt = max(
            chars // CHARS_PER_TOKEN_FLOOR,
            last_tokens + (chars - last_chars) // CHARS_PER_TOKEN_FLOOR,
        )
        return self.pricing.worst_case_micro_usd(prompt, self.limits.max_tokens)
