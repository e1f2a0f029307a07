"""Readings of the factory's Prometheus registry, and what changed between two of them.

The dashboard keeps no counts of its own: it reads the very counters and histograms that
`/metrics` renders, at moments of its choosing, and takes differences. A counter's total since
start is the latest reading; "lately" (a rate, a percentile, a share) is the difference between
the latest reading and one taken about a window ago.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from prometheus_client import CollectorRegistry

Labels = tuple[tuple[str, str], ...]  # sorted (name, value) pairs
MIN_READING_GAP_S = 0.5


@dataclass(frozen=True)
class Reading:
    """Every sample of a registry at one moment (`at`: time.monotonic())."""

    at: float
    values: Mapping[tuple[str, Labels], float]

    @classmethod
    def of(cls, registry: CollectorRegistry, at: float) -> Reading:
        values: dict[tuple[str, Labels], float] = {}
        for family in registry.collect():
            for s in family.samples:
                values[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return cls(at, values)

    def total(self, name: str, **match: str) -> float:
        """The sum of `name`'s samples whose labels include `match` (e.g. tier="high")."""
        return sum(v for (n, labels), v in self.values.items() if n == name and _has(labels, match))

    def buckets(self, histogram: str, **match: str) -> dict[float, float]:
        """A histogram's cumulative counts by upper bound, summed over the other labels."""
        out: dict[float, float] = {}
        for (n, labels), v in self.values.items():
            if n != f"{histogram}_bucket" or not _has(labels, match):
                continue
            bound = float(dict(labels)["le"])
            out[bound] = out.get(bound, 0.0) + v
        return out


def _has(labels: Labels, match: Mapping[str, str]) -> bool:
    d = dict(labels)
    return all(d.get(k) == v for k, v in match.items())


@dataclass(frozen=True)
class Change:
    """What happened between two readings: counter and histogram differences."""

    before: Reading
    after: Reading

    @property
    def span_s(self) -> float:
        return max(0.0, self.after.at - self.before.at)

    def delta(self, name: str, **match: str) -> float:
        return max(0.0, self.after.total(name, **match) - self.before.total(name, **match))

    def rate(self, name: str, **match: str) -> float | None:
        """Per second over the span; None when the span is empty (one reading so far)."""
        span = self.span_s
        return self.delta(name, **match) / span if span > 0 else None

    def quantile(self, histogram: str, q: float, **match: str) -> float | None:
        """The q-quantile of the observations made in the span (None: there were none)."""
        after = self.after.buckets(histogram, **match)
        before = self.before.buckets(histogram, **match)
        counts = {b: max(0.0, c - before.get(b, 0.0)) for b, c in after.items()}
        return bucket_quantile(q, counts)

    def mean(self, histogram: str, **match: str) -> float | None:
        count = self.delta(f"{histogram}_count", **match)
        return self.delta(f"{histogram}_sum", **match) / count if count > 0 else None


def bucket_quantile(q: float, cumulative: Mapping[float, float]) -> float | None:
    """The q-quantile from cumulative bucket counts, interpolated linearly inside the bucket
    it falls in (as Prometheus's histogram_quantile does; the first bucket starts at 0, and a
    quantile in the +Inf bucket is the largest finite bound)."""
    bounds = sorted(cumulative)
    if not bounds or cumulative[bounds[-1]] <= 0:
        return None
    total = cumulative[bounds[-1]]
    rank = q * total
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = cumulative[bound]
        if count >= rank and count > below:
            if math.isinf(bound):
                return lower
            return lower + (bound - lower) * (rank - below) / (count - below)
        if not math.isinf(bound):
            lower = bound
        below = count
    return lower


class ReadingWindow:
    """Readings of one registry over a sliding window, taken when someone asks.

    `change()` reads the registry now and pairs it with the oldest reading still inside the
    window (or the newest one before it), so a poll every second or two gives a window of
    about `window_s`. The first reading is taken at construction, so the first change runs
    from then; its span is what it is (`Change.span_s`), never pretended to be the window."""

    def __init__(
        self,
        registry: CollectorRegistry,
        window_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        refresh: Callable[[], None] | None = None,
    ) -> None:
        self.registry = registry
        self.window_s = window_s
        self.clock = clock
        self.refresh = refresh
        self._lock = threading.Lock()
        self._readings: deque[Reading] = deque([self._read()])

    def _read(self) -> Reading:
        if self.refresh is not None:
            self.refresh()  # gauges are set from the engine when read, as /metrics does
        return Reading.of(self.registry, self.clock())

    def change(self) -> Change:
        with self._lock:
            now = self._read()
            cutoff = now.at - self.window_s
            # keep one reading at or before the cutoff: the window's start
            while len(self._readings) > 1 and self._readings[1].at <= cutoff:
                self._readings.popleft()
            before = self._readings[0]
            # many viewers polling at once add one reading per half second, not one each
            if now.at - self._readings[-1].at >= MIN_READING_GAP_S:
                self._readings.append(now)
            return Change(before, now)
