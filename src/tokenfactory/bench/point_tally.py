"""What one load point of `bench policies` measured, as sums that pool across runs.

A point can run under several arrival seeds (`--seeds`): with 2% super requests one run
holds a handful of them, so one request decides a cell; pooling the runs' requests gives each
tier's attainment over all of them. The HTTP benchmark fills a tally from `bench serve`
reports, the simulator from its finished sequences; both summarise the same way.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np


@dataclass
class PointTally:
    rate: float
    duration_s: float = 0.0
    runs: int = 0
    sent: Counter[str] = field(default_factory=Counter)  # requests per tier (errors included)
    met: Counter[str] = field(default_factory=Counter)  # of which kept their tier's promise
    ttfts: dict[str, list[float]] = field(default_factory=dict)  # successful first tokens
    revenue_micro_usd: int = 0  # billed at the tiers delivered
    # The same usage at the tiers asked (what keeping every promise would have billed); None
    # when a pooled report predates it.
    asked_revenue_micro_usd: int | None = 0
    output_tokens: int = 0
    errors: Counter[str] = field(default_factory=Counter)  # by HTTP status

    def request(self, tier: str, kept: bool, ttft_s: float | None = None) -> None:
        self.sent[tier] += 1
        self.met[tier] += kept
        if ttft_s is not None:
            self.ttfts.setdefault(tier, []).append(ttft_s)

    def add(self, other: PointTally) -> PointTally:
        self.duration_s += other.duration_s
        self.runs += other.runs
        self.sent.update(other.sent)
        self.met.update(other.met)
        for tier, values in other.ttfts.items():
            self.ttfts.setdefault(tier, []).extend(values)
        self.revenue_micro_usd += other.revenue_micro_usd
        if self.asked_revenue_micro_usd is None or other.asked_revenue_micro_usd is None:
            self.asked_revenue_micro_usd = None
        else:
            self.asked_revenue_micro_usd += other.asked_revenue_micro_usd
        self.output_tokens += other.output_tokens
        self.errors.update(other.errors)
        return self

    def summary(self) -> dict:
        dur = max(self.duration_s, 1e-9)
        return {
            "rate": self.rate,
            "duration_s": self.duration_s,
            "runs": self.runs,
            "attainment": {t: self.met[t] / n for t, n in self.sent.items() if n},
            "ttft_p99_s": {
                t: float(np.percentile(v, 99)) for t, v in self.ttfts.items() if v
            },
            "revenue_usd_per_s": self.revenue_micro_usd / 1e6 / dur,
            "revenue_at_tiers_asked_usd_per_s": (
                None
                if self.asked_revenue_micro_usd is None
                else self.asked_revenue_micro_usd / 1e6 / dur
            ),
            "output_tokens_per_s": self.output_tokens / dur,
            "errors": dict(self.errors),
        }

    @staticmethod
    def of_report(report: dict) -> PointTally:
        """A `bench serve` report's first run: its per-tier counts, totals and first tokens."""
        run = report["runs"][0]
        summary = run["summary"]
        overall = summary["overall"]
        tally = PointTally(
            rate=run["request_rate"],
            duration_s=run["duration_s"],
            runs=1,
            revenue_micro_usd=overall["revenue"]["micro_usd"],
            asked_revenue_micro_usd=overall["revenue"].get("at_tier_asked_micro_usd"),
            output_tokens=overall["tokens"]["output"],
            errors=Counter(overall["errors"]["by_status"]),
        )
        for tier, ts in summary["tiers"].items():
            tally.sent[tier] += ts["requests"]["sent"]
            tally.met[tier] += ts["promise"]["met"]
        for r in run["requests"]:
            if r["ok"] and r["ttft_s"] is not None:
                tally.ttfts.setdefault(r["tier"], []).append(r["ttft_s"])
        return tally
