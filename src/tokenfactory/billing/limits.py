"""Per-key rate limits as token buckets (requests per minute, tokens per minute).

A bucket holds up to `capacity` units and refills at capacity/60 per second. Admission takes
one request and prompt + max_completion tokens; settlement gives back the tokens not used.
The clock is injectable so tests can move time.

`MemoryRateLimits` keeps the buckets in this process (the embedded SQLite ledger: one
process); `shared_limits.DatabaseRateLimits` keeps them in PostgreSQL rows that every front
updates. Both answer the same `RateLimits` protocol and raise the same errors.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy.engine import Connection

from tokenfactory.billing.errors import RateLimitExceededError
from tokenfactory.billing.keys import ApiKey


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

    def take(self, tokens: int) -> None:
        if self.requests is not None:
            self.requests.take(1)
        if self.tokens is not None:
            self.tokens.take(tokens)

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


def check_rate(limits: KeyLimits, tokens: int) -> None:
    """Raise RateLimitExceededError when the (refilled) buckets cannot take one request of
    `tokens` tokens now."""
    if limits.requests is not None and (wait := limits.requests.wait_for(1)) > 0:
        raise RateLimitExceededError(
            f"Rate limit reached for requests: limit {int(limits.requests.capacity)} per "
            f"minute. Please try again in {wait:.3g}s.",
            limit_type="requests",
            retry_after_s=wait,
            headers={**limits.headers(), **retry_after_headers(wait)},
        )
    if limits.tokens is None:
        return
    if tokens > limits.tokens.capacity:
        wait = 60.0
        raise RateLimitExceededError(
            f"Request too large: it may use {tokens} tokens (prompt + max completion), more "
            f"than this key's limit of {int(limits.tokens.capacity)} tokens per minute. "
            "Send a shorter prompt or a smaller max_tokens.",
            limit_type="tokens",
            retry_after_s=wait,
            headers={**limits.headers(), **retry_after_headers(wait)},
        )
    if (wait := limits.tokens.wait_for(tokens)) > 0:
        raise RateLimitExceededError(
            f"Rate limit reached for tokens: limit {int(limits.tokens.capacity)} per minute, "
            f"this request may use {tokens}. Please try again in {wait:.3g}s.",
            limit_type="tokens",
            retry_after_s=wait,
            headers={**limits.headers(), **retry_after_headers(wait)},
        )


class RateLimits(Protocol):
    """Where a key's buckets live. `conn` is the admission's (or settlement's) transaction;
    `undo` puts back what `take` took when that transaction did not commit."""

    def take(self, conn: Connection, key: ApiKey, tokens: int) -> dict[str, str]:
        """Take one request and `tokens` tokens or raise RateLimitExceededError; returns the
        x-ratelimit-* headers after the take."""
        ...

    def undo(self, key: ApiKey, tokens: int) -> None: ...

    def give_back(self, conn: Connection, key: ApiKey, tokens: int) -> None: ...

    def headers(self, key: ApiKey) -> dict[str, str]: ...


class MemoryRateLimits:
    """Buckets in this process's memory: exact while one process admits on the database."""

    def __init__(self, clock: Clock):
        self._clock = clock
        self._lock = threading.Lock()
        self._limits: dict[str, KeyLimits] = {}

    def _refilled(self, key: ApiKey) -> KeyLimits:
        now = self._clock()
        limits = self._limits.get(key.key_id)
        if limits is None:
            limits = self._limits[key.key_id] = KeyLimits.for_key(key.rpm, key.tpm, now)
        limits.refill(now)
        return limits

    def take(self, conn: Connection, key: ApiKey, tokens: int) -> dict[str, str]:
        with self._lock:
            limits = self._refilled(key)
            check_rate(limits, tokens)
            limits.take(tokens)
            return limits.headers()

    def undo(self, key: ApiKey, tokens: int) -> None:
        with self._lock:
            limits = self._limits.get(key.key_id)
            if limits is None:
                return
            if limits.requests is not None:
                limits.requests.give_back(1)
            if limits.tokens is not None:
                limits.tokens.give_back(tokens)

    def give_back(self, conn: Connection, key: ApiKey, tokens: int) -> None:
        with self._lock:
            limits = self._limits.get(key.key_id)
            if limits is not None and limits.tokens is not None and tokens > 0:
                limits.tokens.give_back(tokens)

    def headers(self, key: ApiKey) -> dict[str, str]:
        with self._lock:
            return self._refilled(key).headers()
