"""A request's terms as the `tier` policy reads them: the level it can still be billed at.

A request that misses its TTFT is billed at the best slower tier whose TTFT it still meets
(`ServiceTerms.fallbacks`), so the policy paces and values it at that level: before its first
token, the first level whose TTFT deadline is not past; after, the first whose TTFT it met
(the last level when none). Pure functions of the terms, the request and the clock.
"""

from __future__ import annotations

import functools
import math
from dataclasses import replace

from tokenfactory.scheduling.view import RequestView
from tokenfactory.tiers import BEST_EFFORT, Promise, ServiceTerms

# What a request without terms (offline use, a test) is scheduled as: the lowest rank, best
# effort, worth nothing extra.
BEST_EFFORT_TERMS = ServiceTerms(tier="", rank=0, promise=BEST_EFFORT)


def terms_of(request: RequestView) -> ServiceTerms:
    return request.terms if request.terms is not None else BEST_EFFORT_TERMS


def received_at(request: RequestView, terms: ServiceTerms) -> float:
    """When the request reached the factory (its terms say; else when the engine got it)."""
    return terms.received_at if terms.received_at is not None else request.arrival_time


def settled_level(request: RequestView, terms: ServiceTerms, now: float) -> Promise:
    """The best level `request` can still be billed at, as of `now`."""
    if not terms.fallbacks:
        return terms.promise
    start = received_at(request, terms)
    first = request.first_token_time
    waited = (first if first is not None else now) - start
    for level in terms.levels:
        if level.ttft_s is None or level.ttft_s >= waited:
            return level
    return terms.levels[-1]


def downgraded(terms: ServiceTerms, level: Promise, ttft_s: float | None) -> ServiceTerms:
    """`terms` fixed at the slower `level` for good, keeping the first-token deadline it had
    (it starts now: a slower tier's longer TTFT would only let its prompt wait). Its tier and
    rank stay: it queued as its own tier."""
    return replace(terms, promise=replace(level, ttft_s=ttft_s), fallbacks=())


@functools.lru_cache(maxsize=64)
def value_weight(price: int, value_unit: float) -> float:
    """Value weight: 1 for free work, growing with the log of the output price."""
    return 1.0 + math.log2(1.0 + price / value_unit)
