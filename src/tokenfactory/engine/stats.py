"""Per-step statistics: what each engine step did and how long it took.

Kept for metrics, for the scheduler's step-time model and for the planner, which fits
step time as a function of decode sequences, prefill tokens and KV tokens read.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable

from tokenfactory.scheduling.step_stats import StepStats


class StatsLog:
    """A bounded, thread-safe log of recent steps plus running totals."""

    def __init__(self, capacity: int = 4096):
        self._steps: deque[StepStats] = deque(maxlen=capacity)
        self._lock = threading.Lock()
        self.total_steps = 0
        self.total_prefill_tokens = 0
        self.total_decode_tokens = 0
        self.total_preemptions = 0
        self.total_step_s = 0.0
        self.total_schedule_s = 0.0
        self._sinks: list[Callable[[StepStats], None]] = []  # e.g. a step log file

    def add_sink(self, sink: Callable[[StepStats], None]) -> None:
        """Also hand every later step to `sink` (on the engine's thread)."""
        with self._lock:
            self._sinks.append(sink)

    def record(self, stats: StepStats) -> None:
        for sink in self._sinks:
            sink(stats)
        with self._lock:
            self._steps.append(stats)
            self.total_steps += 1
            self.total_prefill_tokens += stats.num_prefill_tokens
            self.total_decode_tokens += stats.num_decode_tokens
            self.total_preemptions += stats.num_preempted
            self.total_step_s += stats.duration_s
            self.total_schedule_s += stats.schedule_s

    def recent(self, n: int | None = None) -> list[StepStats]:
        with self._lock:
            steps = list(self._steps)
        return steps if n is None else steps[-n:]

    def clear(self) -> None:
        with self._lock:
            self._steps.clear()
