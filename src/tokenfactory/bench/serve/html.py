"""The HTML report: summary tables and matplotlib plots embedded as base64 PNG, built from the
JSON document alone (so any saved report can be re-rendered)."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

_STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}
table{border-collapse:collapse;font-size:13px;margin:1em 0}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
td:first-child,th:first-child{text-align:left}img{max-width:100%}code{background:#f4f4f4}"""


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return f'<img src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _by_tier(run: dict) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {name: [] for name in run["summary"]["tiers"]}
    for row in run["requests"]:
        groups.setdefault(row["tier"], []).append(row)
    return groups


def _targets(doc: dict) -> dict[str, dict]:
    return {t["name"]: t for t in doc["tiers"]["data"]}


def latency_cdfs(doc: dict, run: dict) -> str:
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    targets = _targets(doc)
    for ax, key, title in zip(
        axes, ("ttft_s", "tpot_s", "e2el_s"), ("TTFT", "TPOT", "E2EL"), strict=True
    ):
        for i, (tier, rows) in enumerate(_by_tier(run).items()):
            vals = np.sort([r[key] * 1000 for r in rows if r["ok"] and r[key] is not None])
            if vals.size == 0:
                continue
            color = f"C{i}"
            ax.step(
                vals, np.arange(1, vals.size + 1) / vals.size, where="post", label=tier, color=color
            )
            if key == "ttft_s" and tier in targets:
                ax.axvline(targets[tier]["ttft_s"] * 1000, color=color, ls=":", lw=1)
        if key == "ttft_s":
            ax.set_xscale("log")  # promises span 0.3 s to 30 s
        ax.set_xlabel(f"{title} (ms)")
        ax.set_ylabel("share of requests")
        ax.set_title(f"{title} CDF" + (" (dotted: promise)" if key == "ttft_s" else ""))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _png(fig)


def speed_over_time(doc: dict, run: dict) -> str:
    fig, ax = plt.subplots(figsize=(10, 4))
    targets = _targets(doc)
    for i, (tier, rows) in enumerate(_by_tier(run).items()):
        pts = [
            (r["end_s"], r["decode_tokens_per_s"])
            for r in rows
            if r["decode_tokens_per_s"] is not None and r["end_s"] is not None
        ]
        if not pts:
            continue
        x, y = zip(*pts, strict=True)
        ax.scatter(x, y, s=10, label=tier, color=f"C{i}", alpha=0.7)
        if tier in targets:
            ax.axhline(targets[tier]["tokens_per_s"], color=f"C{i}", ls=":", lw=1)
    ax.set_xlabel("request end (s since start)")
    ax.set_ylabel("decode tokens/s per user")
    ax.set_title("Tokens/s per user over time (dotted: promise)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


def revenue_over_time(run: dict) -> str:
    fig, ax = plt.subplots(figsize=(10, 4))
    every = []
    for i, (tier, rows) in enumerate(_by_tier(run).items()):
        pts = sorted((r["end_s"], r["cost_micro_usd"]) for r in rows if r["end_s"] is not None)
        every += pts
        if pts:
            x, c = zip(*pts, strict=True)
            ax.step(x, np.cumsum(c) / 1e6, where="post", label=tier, color=f"C{i}")
    if every:
        every.sort()
        x, c = zip(*every, strict=True)
        ax.step(x, np.cumsum(c) / 1e6, where="post", label="total", color="black", lw=2)
    ax.set_xlabel("time (s since start)")
    ax.set_ylabel("revenue (USD, cumulative)")
    ax.set_title("Realised revenue over time")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


def throughput_vs_interactivity(doc: dict) -> str:
    fig, ax = plt.subplots(figsize=(8, 5))
    series: dict[str, list[tuple[float, float, str]]] = {}
    for run in doc["runs"]:
        groups = list(run["summary"]["tiers"].items()) + [("overall", run["summary"]["overall"])]
        for name, s in groups:
            x = s["decode_tokens_per_s"]["p50"]
            if x is not None:
                y = s["throughput"]["output_tokens_per_s"]
                series.setdefault(name, []).append((x, y, run["label"]))
    for i, (name, pts) in enumerate(series.items()):
        pts.sort()
        x, y, labels = zip(*pts, strict=True)
        style = {"color": "black", "lw": 2} if name == "overall" else {"color": f"C{i}"}
        ax.plot(x, y, marker="o", label=name, **style)
        if name == "overall":
            for xi, yi, lab in pts:
                ax.annotate(lab, (xi, yi), fontsize=7, textcoords="offset points", xytext=(4, 4))
    ax.set_xlabel("interactivity: tokens/s per user (p50)")
    ax.set_ylabel("throughput: output tokens/s")
    ax.set_title("Throughput vs interactivity (one point per load point)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


def _summary_html(run: dict) -> str:
    head = (
        "tier",
        "ok/sent",
        "errors",
        "TTFT p50 ms",
        "TTFT p99 ms",
        "TPOT p50 ms",
        "ITL p50 ms",
        "E2EL p50 ms",
        "tok/s/user p50",
        "attained",
        "goodput r/s",
        "out tok/s",
        "cached",
        "USD/h",
    )
    out = ["<table><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>"]
    rows = list(run["summary"]["tiers"].items()) + [("overall", run["summary"]["overall"])]

    def f(x, fmt="{:,.1f}"):
        return "-" if x is None else fmt.format(x)

    for name, s in rows:
        att = s["promise"]["attainment"]
        cells = (
            html.escape(name),
            f"{s['requests']['completed']}/{s['requests']['sent']}",
            str(s["errors"]["total"]),
            f(s["ttft_ms"]["p50"]),
            f(s["ttft_ms"]["p99"]),
            f(s["tpot_ms"]["p50"]),
            f(s["itl_ms"]["p50"]),
            f(s["e2el_ms"]["p50"]),
            f(s["decode_tokens_per_s"]["p50"]),
            "-" if att is None else f"{att:.1%}",
            f(s["goodput_requests_per_s"], "{:,.2f}"),
            f(s["throughput"]["output_tokens_per_s"], "{:,.0f}"),
            f"{s['tokens']['cached_share']:.1%}",
            f(s["revenue"]["usd_per_hour"], "{:,.4f}"),
        )
        out.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    out.append("</table>")
    errors = run["summary"]["overall"]["errors"]
    if errors["total"]:
        out.append(
            f"<p>Errors by type: <code>{html.escape(str(errors['by_type']))}</code>, "
            f"by HTTP status: <code>{html.escape(str(errors['by_status']))}</code></p>"
        )
    return "\n".join(out)


def write_html(doc: dict, path: Path) -> None:
    cfg, ep = doc["config"], doc["endpoint"]
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>bench serve</title>"
        f"<style>{_STYLE}</style></head><body>",
        "<h1>tokenfactory bench serve</h1>",
        f"<p>Endpoint <code>{html.escape(str(ep.get('base_url')))}</code>, model "
        f"<code>{html.escape(str(ep.get('model')))}</code>, workload "
        f"<code>{html.escape(str(cfg.get('workload')))}</code>, tiers from "
        f"<code>{html.escape(str(doc['tiers']['source']))}</code>.</p>",
        "<h2>Throughput vs interactivity</h2>",
        throughput_vs_interactivity(doc),
    ]
    for run in doc["runs"]:
        parts += [
            f"<h2>{html.escape(run['label'])} ({run['duration_s']:.1f} s, "
            f"started {run['started_utc']})</h2>",
            _summary_html(run),
            latency_cdfs(doc, run),
            speed_over_time(doc, run),
            revenue_over_time(run),
        ]
    parts.append("</body></html>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts), encoding="utf-8")
