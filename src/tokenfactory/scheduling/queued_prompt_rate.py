"""How fast the engine computes prompts while requests queue, and so how long a queue waits.

Admission by a fluid load estimate sees the running requests only. When prompts arrive faster
than the engine computes them (on a GPU whose fastest promise needs a step every few
milliseconds, little time is left for prompt chunks), requests pile up in the queue unseen,
and one at the back gets its first token long after its TTFT. The prompt tokens computed per
second in steps that had a queue is what the engine really gives prompts under this load, so
the wait of a request behind a queue follows from the prompt tokens ahead of it.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass
class QueuedPromptRate:
    window_s: float = 5.0  # the most recent queued step time the rate is taken over
    min_evidence_s: float = 1.0  # with less queued step time than this, no estimate
    _steps: deque[tuple[float, int]] = field(default_factory=deque)
    _time_s: float = 0.0
    _tokens: int = 0

    def observe(self, duration_s: float, prefill_tokens: int, num_waiting: int) -> None:
        """Count one finished step if requests were waiting after it."""
        if num_waiting <= 0 or not duration_s > 0:
            return
        self._steps.append((duration_s, prefill_tokens))
        self._time_s += duration_s
        self._tokens += prefill_tokens
        while self._steps and self._time_s - self._steps[0][0] >= self.window_s:
            old_s, old_tokens = self._steps.popleft()
            self._time_s -= old_s
            self._tokens -= old_tokens

    def tokens_per_s(self) -> float | None:
        """Prompt tokens computed per second of queued steps; None without enough of them."""
        if self._time_s < self.min_evidence_s:
            return None
        return self._tokens / self._time_s

    def wait_s(self, tokens_ahead: int) -> float | None:
        """Seconds until `tokens_ahead` prompt tokens are computed at the queued rate (None:
        no estimate yet; infinite when queued steps computed no prompt at all)."""
        rate = self.tokens_per_s()
        if rate is None:
            return None
        return tokens_ahead / rate if rate > 0 else float("inf")
