"""Console tables: a run's summary per tier and overall, and `compare` of two reports."""

from __future__ import annotations

from dataclasses import dataclass

from rich.console import Console
from rich.table import Table

from tokenfactory.bench.serve.tiers_info import TierSpeculation


def _f(x: float | None, fmt: str = "{:,.1f}") -> str:
    return "-" if x is None else fmt.format(x)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x * 100:.1f}%"


def summary_table(run: dict) -> Table:
    t = Table(title=f"{run['label']}  ({run['duration_s']:.1f} s)", title_justify="left")
    for col in (
        "tier",
        "ok/sent",
        "errors",
        "TTFT p50/p99 ms",
        "TPOT p50 ms",
        "ITL p50 ms",
        "E2EL p50 ms",
        "tok/s/user p50",
        "promise",
        "attained",
        "goodput r/s",
        "out tok/s",
        "cached",
        "revenue $/h",
    ):
        t.add_column(col, justify="left" if col == "tier" else "right")
    rows = list(run["summary"]["tiers"].items()) + [("overall", run["summary"]["overall"])]
    for name, s in rows:
        p = s["promise"]
        promise = f"{p['tokens_per_s']:g} t/s, {p['ttft_s']:g} s" if "tokens_per_s" in p else ""
        t.add_row(
            f"[bold]{name}[/bold]" if name == "overall" else name,
            f"{s['requests']['completed']}/{s['requests']['sent']}",
            str(s["errors"]["total"]),
            f"{_f(s['ttft_ms']['p50'], '{:,.0f}')}/{_f(s['ttft_ms']['p99'], '{:,.0f}')}",
            _f(s["tpot_ms"]["p50"]),
            _f(s["itl_ms"]["p50"]),
            _f(s["e2el_ms"]["p50"], "{:,.0f}"),
            _f(s["decode_tokens_per_s"]["p50"]),
            promise,
            _pct(p["attainment"]),
            _f(s["goodput_requests_per_s"], "{:,.2f}"),
            _f(s["throughput"]["output_tokens_per_s"], "{:,.0f}"),
            _pct(s["tokens"]["cached_share"]),
            _f(s["revenue"]["usd_per_hour"], "{:,.4f}"),
        )
    return t


def print_summary(doc: dict, console: Console) -> None:
    for run in doc["runs"]:
        console.print(summary_table(run))
        errors = run["summary"]["overall"]["errors"]
        if errors["total"]:
            console.print(
                f"errors by kind {errors['by_kind']}, by type {errors['by_type']}, "
                f"by HTTP status {errors['by_status']}"
            )
        if run.get("clamped_requests"):
            console.print(
                f"[yellow]{run['clamped_requests']} requests shortened to fit --max-context"
            )


def task_table(run: dict) -> Table:
    """Cost per task and prefix-cache hit per tier (one agent session = one task)."""
    tasks = run["tasks"]
    t = Table(title=f"{run['label']}: cost per task", title_justify="left")
    for col in (
        "tier", "tasks", "req/task", "prompt tok/task", "prefix-cache hit", "1st req hit",
        "later hit", "later ceiling", "cost/task mean $", "p50 $", "p90 $",
        "ledger/task mean $",
    ):
        t.add_column(col, justify="left" if col == "tier" else "right")

    def usd(x: float | None) -> str:
        return "-" if x is None else f"{x / 1e6:.6f}"

    for name, s in tasks["by_tier"].items():
        cost = s["cost_per_task_micro_usd"]
        ledger = s["ledger_cost_per_task_micro_usd"]
        t.add_row(
            name,
            str(s["tasks"]),
            _f(s["requests_per_task"]),
            _f(s["prompt_tokens_per_task"], "{:,.0f}"),
            _pct(s["prefix_cache_hit"]),
            _pct(s["first_request_cache_hit"]),
            _pct(s["later_requests_cache_hit"]),
            _pct(s["later_requests_reuse_ceiling"]),
            usd(cost["mean"]),
            usd(cost["p50"]),
            usd(cost["p90"]),
            usd(ledger["mean"] if ledger else None),
        )
    return t


def print_task_summary(doc: dict, console: Console) -> None:
    for run in doc["runs"]:
        if run.get("tasks"):
            console.print(task_table(run))


# -- compare ------------------------------------------------------------------------

# (label, path in a summary, higher is better)
METRICS: tuple[tuple[str, tuple[str, ...], bool], ...] = (
    ("output tokens/s", ("throughput", "output_tokens_per_s"), True),
    ("requests/s", ("throughput", "requests_per_s"), True),
    ("goodput requests/s", ("goodput_requests_per_s",), True),
    ("promise attainment", ("promise", "attainment"), True),
    ("revenue USD/h", ("revenue", "usd_per_hour"), True),
    ("TTFT p50 ms", ("ttft_ms", "p50"), False),
    ("TTFT p99 ms", ("ttft_ms", "p99"), False),
    ("TPOT p50 ms", ("tpot_ms", "p50"), False),
    ("ITL p50 ms", ("itl_ms", "p50"), False),
    ("E2EL p50 ms", ("e2el_ms", "p50"), False),
    ("tokens/s per user p50", ("decode_tokens_per_s", "p50"), True),
    ("cached share", ("tokens", "cached_share"), True),
    ("errors", ("errors", "total"), False),
)


@dataclass
class CompareRow:
    run: str
    group: str
    metric: str
    a: float | None
    b: float | None
    higher_is_better: bool

    @property
    def ratio(self) -> float | None:
        if self.a is None or self.b is None or self.a == 0:
            return None
        return self.b / self.a


def _get(summary: dict, path: tuple[str, ...]) -> float | None:
    node: object = summary
    for key in path:
        if not isinstance(node, dict):
            return None
        node = node.get(key)
    return float(node) if isinstance(node, int | float) else None


def compare_reports(a: dict, b: dict) -> list[CompareRow]:
    """Rows for each pair of runs (by position) and each group both have."""
    rows = []
    for ra, rb in zip(a["runs"], b["runs"], strict=False):
        label = ra["label"] if ra["label"] == rb["label"] else f"{ra['label']} | {rb['label']}"
        groups = ["overall"] + [t for t in ra["summary"]["tiers"] if t in rb["summary"]["tiers"]]
        for g in groups:
            sa = ra["summary"]["overall"] if g == "overall" else ra["summary"]["tiers"][g]
            sb = rb["summary"]["overall"] if g == "overall" else rb["summary"]["tiers"][g]
            for name, path, hib in METRICS:
                rows.append(CompareRow(label, g, name, _get(sa, path), _get(sb, path), hib))
    return rows


def print_compare(rows: list[CompareRow], names: tuple[str, str], console: Console) -> None:
    by_run: dict[str, list[CompareRow]] = {}
    for r in rows:
        by_run.setdefault(r.run, []).append(r)
    for run, items in by_run.items():
        t = Table(title=run, title_justify="left")
        for col in ("group", "metric", f"A: {names[0]}", f"B: {names[1]}", "B/A"):
            t.add_column(col, justify="left" if col in ("group", "metric") else "right")
        last = None
        for r in items:
            ratio = r.ratio
            style = ""
            if ratio is not None and abs(ratio - 1) > 0.02:
                better = (ratio > 1) == r.higher_is_better
                style = "green" if better else "red"
            shown = "-" if ratio is None else f"{ratio:.3f}"
            t.add_row(
                r.group if r.group != last else "",
                r.metric,
                _f(r.a, "{:,.4g}"),
                _f(r.b, "{:,.4g}"),
                f"[{style}]{shown}[/{style}]" if style else shown,
            )
            last = r.group
        console.print(t)


def print_tier_speculation(
    speculation: dict[str, TierSpeculation | None] | None, console: Console
) -> None:
    """The endpoint's speculative decoding per tier at the end of the run (from /v1/tiers)."""
    if speculation is None:
        console.print("speculation: not reported by the endpoint")
        return
    t = Table(title="speculation per tier (the endpoint's /v1/tiers at the end of the run)")
    for col in ("tier", "proposer", "acceptance", "relies on it"):
        t.add_column(col, justify="left" if col in ("tier", "proposer") else "right")
    for tier, spec in speculation.items():
        if spec is None:
            t.add_row(tier, "off", "-", "-")
        else:
            t.add_row(
                tier,
                spec.proposer,
                _pct(spec.acceptance),
                "yes" if spec.relies_on_speculation else "no",
            )
    console.print(t)
