"""Per-request generator seeds: a seeded request replays the same tokens."""

from __future__ import annotations

_MASK64 = (1 << 64) - 1


def row_seed(seed: int, step: int) -> int:
    """A 64-bit generator seed for a request's `step`-th output token (splitmix64 mixing).

    Depends only on the request, never on its batch mates or on how often it was preempted,
    so a seeded request replays the same tokens.
    """
    x = (seed * 0x9E3779B97F4A7C15 + step) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)
