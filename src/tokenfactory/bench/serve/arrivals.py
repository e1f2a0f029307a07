"""Arrival processes: gaps between request (or session) starts.

Poisson at `rate` is gamma with shape 1; `burstiness` is the gamma shape k as in vLLM's
`--burstiness`: k < 1 is burstier than Poisson, k > 1 smoother (the gaps' coefficient of
variation is 1/sqrt(k)); the mean gap is always 1/rate. An infinite rate sends at once.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator


def arrival_gaps(rate: float, burstiness: float = 1.0, seed: int = 0) -> Iterator[float]:
    """Endless inter-arrival gaps in seconds."""
    if burstiness <= 0:
        raise ValueError("burstiness must be > 0")
    rng = random.Random(seed)
    if math.isinf(rate):
        while True:
            yield 0.0
    if rate <= 0:
        raise ValueError("request rate must be > 0 (or inf)")
    theta = 1.0 / (rate * burstiness)
    while True:
        yield rng.gammavariate(burstiness, theta)


def parse_rates(text: str) -> list[float]:
    """`1,2,4` -> [1.0, 2.0, 4.0]; `inf` allowed."""
    out = []
    for part in text.split(","):
        part = part.strip()
        if part:
            out.append(float("inf") if part.lower() in ("inf", "infinity") else float(part))
    if not out:
        raise ValueError(f"no request rates in {text!r}")
    return out
