"""The frontier drawn: throughput per chip and per megawatt against speed per user, the tiers'
promises as vertical lines, each tier's best point marked."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tokenfactory.planner.frontier import Point, TierPlacement

_TIER_COLOURS = {
    "free": "#7f7f7f",
    "standard": "#1f77b4",
    "high": "#2ca02c",
    "ultra": "#ff7f0e",
    "super": "#d62728",
}


def plot_frontier(
    title: str,
    curves: dict[str, list[Point]],
    tiers: Sequence[TierPlacement],
    references: Sequence[tuple[str, float]],
    out_base: Path,
) -> list[Path]:
    """Write OUT_BASE.png and OUT_BASE.svg; `references` are published throughputs
    (label, output tokens/s per chip) drawn as horizontal lines."""
    import matplotlib  # the plan extra

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2))
    for ax, key, label in (
        (axes[0], "tokens_per_s", "output tokens/s per chip"),
        (axes[1], "tokens_per_s_per_mw", "output tokens/s per MW (chip power)"),
    ):
        for name, points in curves.items():
            xs = [p.tokens_per_s_per_user for p in points]
            ys = [getattr(p, key) for p in points]
            ax.plot(xs, ys, marker=".", label=name)
        for t in tiers:
            colour = _TIER_COLOURS.get(t.tier, "black")
            ax.axvline(t.promise_tokens_per_s, color=colour, linestyle="--", linewidth=0.8)
            ax.text(
                t.promise_tokens_per_s, 0.16, f" {t.tier}", color=colour, rotation=90,
                va="bottom", transform=ax.get_xaxis_transform(), fontsize=8,
            )
            if t.point is not None:
                ax.plot(
                    t.point.tokens_per_s_per_user, getattr(t.point, key), "o", color=colour,
                    markersize=7, markerfacecolor="none",
                )
        if key == "tokens_per_s":
            for ref_label, value in references:
                ax.axhline(value, color="black", linestyle=":", linewidth=0.8)
                ax.text(0.99, value, f"{ref_label} ", transform=ax.get_yaxis_transform(),
                        va="bottom", ha="right", fontsize=7)
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_ylim(bottom=0)
        ax.set_xlabel("output tokens/s per user")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="lower left")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out_base.parent.mkdir(parents=True, exist_ok=True)
    paths = [out_base.parent / f"{out_base.name}.{ext}" for ext in ("png", "svg")]
    for path in paths:
        fig.savefig(path, dpi=120)
    plt.close(fig)
    return paths
