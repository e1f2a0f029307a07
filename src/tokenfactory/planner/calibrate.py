"""Fit the step-time model to measured steps and say how well it predicts steps it never saw."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tokenfactory.planner.perf_model import (
    HeldOut,
    Peak,
    PerfParams,
    Sample,
    fit,
    held_out,
    relative_errors,
)
from tokenfactory.planner.shapes import ModelShape

HOLD_OUT = ("batch", "context")


def by_batch(s: Sample) -> str:
    return f"batch {round(s.work.seqs)}"


def by_context(s: Sample) -> str:
    return f"context ~{round(s.work.context, -1):.0f}"


def is_prefill(s: Sample) -> bool:
    return s.work.seqs == 0


@dataclass(frozen=True)
class FitReport:
    params: PerfParams
    in_sample: list[float]  # relative errors of the fit on its own samples
    held_out: list[HeldOut]
    hold_out: str

    @property
    def median_abs_held_out(self) -> float:
        return statistics.median(abs(h.error) for h in self.held_out) if self.held_out else 0.0

    def per_group(self, group: Callable[[str], str]) -> dict[str, float]:
        """Median absolute held-out error per group of labels."""
        groups: dict[str, list[float]] = {}
        for h in self.held_out:
            groups.setdefault(group(h.label), []).append(abs(h.error))
        return {k: statistics.median(v) for k, v in groups.items()}


def fit_report(
    shape: ModelShape,
    peak: Peak,
    samples: Sequence[Sample],
    fixed: PerfParams,
    hold_out: str = "batch",
    fit_prefill_step: bool = False,
) -> FitReport:
    """Fit on every sample; then hold out each batch size (or each context) in turn, fit on
    the rest and predict it. A prefill sample is never held out (it pins the compute rate)."""
    if hold_out not in HOLD_OUT:
        raise ValueError(f"hold out by batch or context, not {hold_out!r}")
    params = fit(shape, peak, samples, fixed, fit_prefill_step)
    params = PerfParams(**{k: float(v) for k, v in vars(params).items()})
    group = by_batch if hold_out == "batch" else by_context
    decode = [s for s in samples if not is_prefill(s)]
    if len({group(s) for s in decode}) < 2:
        raise ValueError(f"holding out by {hold_out} needs at least two different ones")
    out = held_out(shape, peak, samples, group, fixed, always=is_prefill,
                   fit_prefill_step=fit_prefill_step)
    return FitReport(params, relative_errors(shape, peak, params, samples), out, hold_out)
