"""Summaries of a run, per tier and overall.

- TTFT, TPOT, ITL, E2EL as vLLM's `bench serve` defines them (see `client`); percentiles are
  numpy's linear interpolation over successful requests (ITL: over all gaps of all requests).
- decode tokens/s per request: (output_tokens - 1) / (t_last - t_first), from the first
  content chunk to the completion's last chunk (a last token without text counts).
- promise attainment: the share of *sent* requests (errors count as misses) whose TTFT <= the
  tier's ttft_s and decode tokens/s >= its tokens_per_s; `tier_promise_kept` applies the
  catalog's tier-level reading (p95 TTFT and p50 decode speed over the tier's requests).
- goodput (DistServe): requests per second that succeeded and met their SLO: the tier promise,
  or the `--goodput` SLOs when given.
- revenue: each response priced at the tier it reports in `service_tier` (else the one asked
  for), with its usage (prompt, cached, completion tokens), in integer micro-dollars; beside
  it, the same usage priced at the tiers asked (what it would have billed had every promise
  been kept).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from tokenfactory.bench.serve.client import RequestRecord
from tokenfactory.tiers import Tier, TierCatalog

PERCENTILES = (50, 90, 95, 99)


@dataclass(frozen=True)
class Slo:
    """`--goodput ttft:500 tpot:50 e2el:3000` (milliseconds), DistServe's per-request SLOs."""

    ttft_ms: float | None = None
    tpot_ms: float | None = None
    e2el_ms: float | None = None

    @classmethod
    def parse(cls, items: list[str] | None) -> Slo | None:
        if not items:
            return None
        values: dict[str, float] = {}
        for item in items:
            for part in item.replace(",", " ").split():
                name, _, ms = part.partition(":")
                if name not in ("ttft", "tpot", "e2el"):
                    raise ValueError(f"bad --goodput {part!r}: use ttft:MS tpot:MS e2el:MS")
                values[f"{name}_ms"] = float(ms)
        return cls(**values)

    def met(self, r: RequestRecord) -> bool:
        checks = ((self.ttft_ms, r.ttft), (self.tpot_ms, r.tpot), (self.e2el_ms, r.e2el))
        return r.ok and all(
            limit is None or (value is not None and value * 1000 <= limit)
            for limit, value in checks
        )


def dist(values: list[float], scale: float = 1.0) -> dict:
    if not values:
        return {"n": 0, "mean": None, **{f"p{p}": None for p in PERCENTILES}, "max": None}
    arr = np.asarray(values, dtype=float) * scale
    pcts = np.percentile(arr, PERCENTILES)
    return {
        "n": int(arr.size),
        "mean": float(arr.mean()),
        **{f"p{p}": float(v) for p, v in zip(PERCENTILES, pcts, strict=True)},
        "max": float(arr.max()),
    }


def tier_of(r: RequestRecord, catalog: TierCatalog) -> str:
    return r.tier or r.delivered_tier or catalog.default_tier


def priced_tier(r: RequestRecord, catalog: TierCatalog) -> Tier | None:
    for name in (r.delivered_tier, r.tier, catalog.default_tier):
        if name and name in catalog:
            return catalog[name]
    return None


def cost_micro_usd(r: RequestRecord, catalog: TierCatalog, tier: Tier | None = None) -> int:
    """A response's price at `tier`, by default at the tier it reports it was delivered at."""
    tier = tier or priced_tier(r, catalog)
    if tier is None or not r.ok:
        return 0
    prompt = r.prompt_tokens if r.prompt_tokens is not None else r.planned_input_tokens
    return tier.cost_micro_usd(prompt, r.cached_tokens or 0, r.output_tokens)


def keeps_promise(r: RequestRecord, tier: Tier | None) -> bool:
    if not r.ok:
        return False
    return tier is None or tier.keeps_promise(r.ttft, r.decode_tps)


def summarize(
    records: list[RequestRecord],
    duration_s: float,
    catalog: TierCatalog,
    tier: Tier | None = None,
    slo: Slo | None = None,
) -> dict:
    ok = [r for r in records if r.ok]
    failed = [r for r in records if not r.ok]
    dur = max(duration_s, 1e-9)
    prompt = sum(
        r.prompt_tokens if r.prompt_tokens is not None else r.planned_input_tokens for r in ok
    )
    output = sum(r.output_tokens for r in ok)
    cached = sum(r.cached_tokens or 0 for r in ok)

    def wanted(r: RequestRecord) -> Tier | None:
        if tier is not None:
            return tier
        name = tier_of(r, catalog)
        return catalog[name] if name in catalog else None

    kept = [r for r in records if keeps_promise(r, wanted(r))]
    good = [r for r in records if slo.met(r)] if slo else kept
    revenue = sum(cost_micro_usd(r, catalog) for r in records)
    # The same tokens had every promise been kept: the most these responses could have billed.
    at_asked = sum(cost_micro_usd(r, catalog, wanted(r)) for r in records)
    ttfts = [r.ttft for r in ok if r.ttft is not None]
    speeds = [v for r in ok if (v := r.decode_tps) is not None]
    out: dict = {
        "requests": {"sent": len(records), "completed": len(ok), "failed": len(failed)},
        "errors": {
            "total": len(failed),
            "by_kind": dict(Counter(r.error_kind for r in failed)),
            "by_type": dict(Counter(r.error_type for r in failed)),
            "by_status": dict(Counter(str(r.error_status) for r in failed if r.error_status)),
        },
        "ttft_ms": dist(ttfts, 1000),
        "tpot_ms": dist([v for r in ok if (v := r.tpot) is not None], 1000),
        "itl_ms": dist([g for r in ok for g in r.itl], 1000),
        "e2el_ms": dist([r.e2el for r in ok if r.e2el is not None], 1000),
        "decode_tokens_per_s": dist(speeds),
        "tokens": {
            "input": prompt,
            "output": output,
            "cached": cached,
            "cached_share": cached / prompt if prompt else 0.0,
            "usage_reported": sum(1 for r in ok if r.completion_tokens is not None),
        },
        "throughput": {
            "requests_per_s": len(ok) / dur,
            "input_tokens_per_s": prompt / dur,
            "output_tokens_per_s": output / dur,
            "total_tokens_per_s": (prompt + output) / dur,
        },
        "goodput_requests_per_s": len(good) / dur,
        "revenue": {
            "micro_usd": revenue,
            "usd": revenue / 1e6,
            "usd_per_s": revenue / 1e6 / dur,
            "usd_per_hour": revenue / 1e6 / dur * 3600,
            "at_tier_asked_micro_usd": at_asked,
            "at_tier_asked_usd_per_s": at_asked / 1e6 / dur,
        },
        "delivered_tiers": dict(Counter(r.delivered_tier or "unreported" for r in ok)),
        "promise": {
            "met": len(kept),
            "attainment": len(kept) / len(records) if records else None,
        },
    }
    if tier is not None:
        p95 = float(np.percentile(ttfts, 95)) if ttfts else None
        p50 = float(np.percentile(speeds, 50)) if speeds else None
        out["promise"].update(
            {
                "tier": tier.name,
                "ttft_s": tier.ttft_s,
                "tokens_per_s": tier.tokens_per_s,
                "p95_ttft_s": p95,
                "p50_decode_tokens_per_s": p50,
                "tier_promise_kept": bool(
                    p95 is not None
                    and p95 <= tier.ttft_s
                    and (p50 is None or p50 >= tier.tokens_per_s)
                    and not failed
                ),
            }
        )
    return out


def summarize_run(
    records: list[RequestRecord], duration_s: float, catalog: TierCatalog, slo: Slo | None
) -> dict:
    groups: dict[str, list[RequestRecord]] = {}
    for r in records:
        groups.setdefault(tier_of(r, catalog), []).append(r)
    rank = {t.name: t.rank for t in catalog.tiers}
    tiers = {
        name: summarize(rs, duration_s, catalog, catalog[name] if name in catalog else None, slo)
        for name, rs in sorted(groups.items(), key=lambda kv: rank.get(kv[0], 99))
    }
    return {"overall": summarize(records, duration_s, catalog, None, slo), "tiers": tiers}
