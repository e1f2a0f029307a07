"""The dashboard's snapshot: per tier promised against delivered, the engine's load, money,
the tier mix and the frontier with the live operating point, as one JSON-ready dict.

Every number comes from the factory's Prometheus metrics (totals: the latest reading; "recent":
the change over the reading window) or from what /v1/tiers reports (tiers, capacity probe).
"""

from __future__ import annotations

import time

from tokenfactory.server.dashboard.readings import Change, Reading
from tokenfactory.server.factory import Factory

# Outcomes of tokenfactory_requests_total that are refusals, by the HTTP status they got
# ("overloaded": a full queue or a server shutting down, counted once the factory counts it).
REFUSED_429 = ("rate_limited", "insufficient_quota", "shed")
REFUSED_503 = ("engine_unavailable", "ledger_unavailable", "overloaded")
SECONDS_PER_HOUR = 3600

_REQUESTS = "tokenfactory_requests_total"
_COMPLETION = "tokenfactory_completion_tokens_total"
_PROMPT = "tokenfactory_prompt_tokens_total"
_REVENUE = "tokenfactory_revenue_micro_usd_total"
_MISSES = "tokenfactory_promise_misses_total"
_TTFT = "tokenfactory_time_to_first_token_seconds"
_SPEED = "tokenfactory_decode_tokens_per_second"


def dashboard_state(factory: Factory, change: Change) -> dict:
    now = change.after
    span = change.span_s
    tiers = [_tier(factory, change, t.name) for t in factory.catalog.tiers]
    recent_tokens = sum(t["recent"]["completion_tokens"] for t in tiers)
    for t in tiers:  # the tier mix: each tier's share of what was delivered lately
        share = t["recent"]["completion_tokens"] / recent_tokens if recent_tokens else None
        t["recent"]["token_share"] = share
    revenue_rate = change.rate(_REVENUE)
    return {
        "object": "dashboard.state",
        "model": factory.model_label,
        "policy": factory.engine.scheduler.policy.name,
        "time": time.time(),
        "uptime_s": time.time() - factory.started_at,
        "window_s": span,
        "engine": {
            "healthy": now.total("tokenfactory_engine_healthy") == 1,
            "running": int(now.total("tokenfactory_running_requests")),
            "waiting": int(now.total("tokenfactory_waiting_requests")),
            "kv_cache_usage": now.total("tokenfactory_kv_cache_usage"),
        },
        "totals": {
            "requests": int(now.total(_REQUESTS)),
            "prompt_tokens": int(now.total(_PROMPT)),
            "completion_tokens": int(now.total(_COMPLETION)),
            "revenue_micro_usd": int(now.total(_REVENUE)),
            "refused_429": _refused(now, REFUSED_429),
            "refused_503": _refused(now, REFUSED_503),
        },
        "recent": {
            "requests": int(change.delta(_REQUESTS)),
            "completion_tokens": int(change.delta(_COMPLETION)),
            "revenue_micro_usd": int(change.delta(_REVENUE)),
            "revenue_micro_usd_per_s": revenue_rate,
            "revenue_micro_usd_per_hour": (
                None if revenue_rate is None else revenue_rate * SECONDS_PER_HOUR
            ),
            "completion_tokens_per_s": change.rate(_COMPLETION),
            "attainment": _attainment(change),
        },
        "tiers": tiers,
        "frontier": _frontier(factory, change),
    }


def _tier(factory: Factory, change: Change, name: str) -> dict:
    tier = factory.catalog[name]
    status = factory.statuses[name]
    now = change.after
    return {
        "name": name,
        "rank": tier.rank,
        "open": status.available,
        "reason": None if status.available else status.reason,
        "promise": {"tokens_per_s": tier.tokens_per_s, "ttft_s": tier.ttft_s},
        # by the tier asked for: how its requests were served lately
        "recent": {
            "requests": int(change.delta(_REQUESTS, tier=name)),
            "served": int(change.delta(f"{_TTFT}_count", tier=name)),
            "tokens_per_s_p50": change.quantile(_SPEED, 0.5, tier=name),
            "tokens_per_s_mean": change.mean(_SPEED, tier=name),
            "ttft_p50_s": change.quantile(_TTFT, 0.5, tier=name),
            "ttft_p99_s": change.quantile(_TTFT, 0.99, tier=name),
            "attainment": _attainment(change, tier=name),
            # by the tier delivered (billed at), as the revenue and token counters are
            "completion_tokens": int(change.delta(_COMPLETION, tier=name)),
            "revenue_micro_usd": int(change.delta(_REVENUE, tier=name)),
        },
        "totals": {
            "requests": int(now.total(_REQUESTS, tier=name)),
            "completion_tokens": int(now.total(_COMPLETION, tier=name)),
            "revenue_micro_usd": int(now.total(_REVENUE, tier=name)),
            "promise_misses": int(now.total(_MISSES, tier=name)),
            "refused_429": _refused(now, REFUSED_429, tier=name),
            "refused_503": _refused(now, REFUSED_503, tier=name),
        },
    }


def _refused(reading: Reading, outcomes: tuple[str, ...], **match: str) -> int:
    return int(sum(reading.total(_REQUESTS, outcome=o, **match) for o in outcomes))


def _attainment(change: Change, **match: str) -> float | None:
    """Share of the requests served lately (they got a first token) that were billed at the
    tier they asked for; None when none was served."""
    served = change.delta(f"{_TTFT}_count", **match)
    if served <= 0:
        return None
    return max(0.0, 1.0 - change.delta(_MISSES, **match) / served)


def _frontier(factory: Factory, change: Change) -> dict:
    """The probe's points (speed per user against total speed, by batch size) and where the
    factory runs lately: mean decode speed per request against tokens delivered per second."""
    cap = factory.capacity
    return {
        "machine": cap.machine,
        "device": cap.device,
        "measured_at": cap.measured_at,
        "points": [
            {
                "batch": p.batch,
                "step_s": p.step_s,
                "tokens_per_s_per_user": p.tokens_per_s_per_user,
                "tokens_per_s": p.tokens_per_s,
            }
            for p in sorted(cap.points, key=lambda p: p.batch)
        ],
        "operating_point": {
            "tokens_per_s_per_user": change.mean(_SPEED),
            "tokens_per_s": change.rate(_COMPLETION),
            "running": int(change.after.total("tokenfactory_running_requests")),
        },
    }
