"""Per-key rate limits as token buckets (requests per minute, tokens per minute).

A bucket holds up to `capacity` units and refills at capacity/60 per second. Admission takes
one request and prompt + max_completion tokens; settlement gives back the tokens not used.
The clock is injectable so tests can move time.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class TokenBucket:
    capacity: float
    level: float
    updated: float  # clock time of the last refill

    @classmethod
    def full(cls, per_minute: int, now: float) -> TokenBucket:
        return cls(float(per_minute), float(per_minute), now)

    @property
    def rate(self) -> float:
        return self.capacity / 60.0

    def refill(self, now: float) -> None:
        if now > self.updated:
            self.level = min(self.capacity, self.level + (now - self.updated) * self.rate)
            self.updated = now

    def wait_for(self, amount: float) -> float:
        """Seconds until `amount` units are available (0 when they are now)."""
        missing = amount - self.level
        return 0.0 if missing <= 0 else missing / self.rate

    def take(self, amount: float) -> None:
        self.level -= amount

    def give_back(self, amount: float) -> None:
        self.level = min(self.capacity, self.level + amount)

    def reset_in(self) -> float:
        """Seconds until the bucket is full again."""
        return max(0.0, (self.capacity - self.level) / self.rate)


@dataclass
class KeyLimits:
    requests: TokenBucket | None
    tokens: TokenBucket | None

    @classmethod
    def for_key(cls, rpm: int | None, tpm: int | None, now: float) -> KeyLimits:
        return cls(
            TokenBucket.full(rpm, now) if rpm is not None else None,
            TokenBucket.full(tpm, now) if tpm is not None else None,
        )

    def refill(self, now: float) -> None:
        for bucket in (self.requests, self.tokens):
            if bucket is not None:
                bucket.refill(now)

    def headers(self) -> dict[str, str]:
        """OpenAI's x-ratelimit-* headers for the buckets this key has (call after refill)."""
        out: dict[str, str] = {}
        for kind, bucket in (("requests", self.requests), ("tokens", self.tokens)):
            if bucket is None:
                continue
            out[f"x-ratelimit-limit-{kind}"] = str(int(bucket.capacity))
            out[f"x-ratelimit-remaining-{kind}"] = str(max(0, math.floor(bucket.level)))
            out[f"x-ratelimit-reset-{kind}"] = format_duration(bucket.reset_in())
        return out


def format_duration(seconds: float) -> str:
    """OpenAI's reset format: "0s", "250ms", "1.5s", "6m0s"."""
    if seconds <= 0:
        return "0s"
    if seconds < 1:
        return f"{max(1, math.ceil(seconds * 1000))}ms"
    millis = math.ceil(seconds * 1000)
    if millis < 60_000:
        return f"{millis / 1000:g}s"
    minutes, rest = divmod(math.ceil(millis / 1000), 60)
    return f"{minutes}m{rest}s"


def retry_after_headers(seconds: float) -> dict[str, str]:
    return {
        "retry-after": str(max(1, math.ceil(seconds))),
        "retry-after-ms": str(max(1, math.ceil(seconds * 1000))),
    }


Clock = Callable[[], float]
