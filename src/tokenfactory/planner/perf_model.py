"""How long one engine step takes for a model on a machine: the roofline plus fitted overheads.

A step reads every weight once and each decoding sequence's KV; it computes every token row
(decodes, draft tokens, prompt tokens) through the linear layers and attention. Memory
traffic and arithmetic each take their bytes or FLOPs over the chip's peak rate times the
fraction of it the software reaches (`memory_efficiency`, `compute_efficiency`); they overlap
only in part, so the step pays their 2-norm, sqrt(memory_s^2 + compute_s^2), between perfect
overlap (max) and none (the sum), the form that fitted the measured CPU and H200 sweeps best
(docs/planning.md). A step also pays a fixed cost (launches, sampling, Python) and a cost per
sequence. Those four numbers are fitted on measured steps; the rest is the model's shape and
the chip's datasheet, so a fit on one chip carries to its siblings.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tokenfactory.planner.shapes import ModelShape


@dataclass(frozen=True)
class PerfParams:
    base_s: float = 0.001
    per_seq_s: float = 0.0
    memory_efficiency: float = 0.7
    compute_efficiency: float = 0.5
    prefill_step_s: float = 0.0  # paid once by a step that computes any prompt token
    per_draft_token_s: float = 0.0  # beside the draft row's arithmetic (the CPU's row cost)
    # Share of peak bandwidth at which attention reads the KV cache (paged, per sequence: far
    # below the weights' streaming on a CPU); None: the weights' memory_efficiency.
    kv_efficiency: float | None = None

    @property
    def kv_share(self) -> float:
        return self.memory_efficiency if self.kv_efficiency is None else self.kv_efficiency


@dataclass(frozen=True)
class Peak:
    bandwidth: float  # bytes/s
    flops: float  # FLOP/s in the weights' format


@dataclass(frozen=True)
class StepWork:
    """What one step does."""

    seqs: float  # decoding sequences
    context: float  # mean tokens each attends over
    prefill_tokens: float = 0.0
    draft_tokens: float = 0.0
    prefill_context: float | None = None  # mean context of the prompt tokens (default: context)


def step_seconds(shape: ModelShape, peak: Peak, p: PerfParams, w: StepWork) -> float:
    kv_read = w.seqs * w.context * shape.kv_bytes_per_token
    pctx = w.context if w.prefill_context is None else w.prefill_context
    flops = (w.seqs + w.draft_tokens) * shape.flops_per_token(w.context)
    flops += w.prefill_tokens * shape.flops_per_token(pctx)
    memory_s = shape.weight_bytes / (p.memory_efficiency * peak.bandwidth)
    memory_s += kv_read / (p.kv_share * peak.bandwidth)
    compute_s = flops / (p.compute_efficiency * peak.flops)
    return (
        p.base_s
        + p.per_seq_s * w.seqs
        + math.hypot(memory_s, compute_s)
        + (p.prefill_step_s if w.prefill_tokens > 0 else 0.0)
        + p.per_draft_token_s * w.draft_tokens
    )


@dataclass(frozen=True)
class Sample:
    """One measured step (a median over several)."""

    work: StepWork
    step_s: float
    label: str = ""  # e.g. "batch 16, context 1032"


_FITTED = ("base_s", "per_seq_s", "memory_efficiency", "compute_efficiency", "kv_efficiency")
_LOWER = (0.0, 0.0, 0.02, 0.01, 0.002)
_UPPER = (1.0, 1.0, 1.0, 1.0, 1.0)


def fit(
    shape: ModelShape,
    peak: Peak,
    samples: Sequence[Sample],
    fixed: PerfParams | None = None,
    fit_prefill_step: bool = False,
) -> PerfParams:
    """Fit base, per-sequence cost and the three efficiencies to `samples` (least squares on
    the log of the ratio, so a 1 ms step counts as much as a 100 ms one); the draft cost
    stays as in `fixed`, and the prefill step's fixed cost too unless `fit_prefill_step`
    (samples of steps with and without prompt tokens at several sizes pin it: a step log)."""
    from scipy.optimize import least_squares  # the plan extra

    if len(samples) < 2:
        raise ValueError("a fit needs at least two measured steps")
    base = fixed or PerfParams()
    quickest = min(s.step_s for s in samples)

    def params(x: Sequence[float]) -> PerfParams:
        return PerfParams(
            base_s=x[0],
            per_seq_s=x[1],
            memory_efficiency=x[2],
            compute_efficiency=x[3],
            kv_efficiency=x[4],
            prefill_step_s=x[5] if fit_prefill_step else base.prefill_step_s,
            per_draft_token_s=base.per_draft_token_s,
        )

    def residuals(x: Sequence[float]) -> list[float]:
        p = params(x)
        res = [math.log(step_seconds(shape, peak, p, s.work) / s.step_s) for s in samples]
        # Faint pulls toward no fixed or per-sequence cost and toward KV read like the
        # weights. The fixed cost and the weights' read are both paid once a step, so decode
        # steps show only their sum; the per-sequence cost trades off against the KV read
        # when there is one context. The roofline explains first what it can.
        res.append(0.05 * x[0] / max(quickest, 1e-9))
        res.append(0.05 * x[1] / max(quickest, 1e-9))
        res.append(0.05 * math.log(x[4] / x[2]))
        return res

    best = None
    # A few starting points: the efficiencies trade off against the fixed costs.
    lower, upper = (_LOWER + (0.0,), _UPPER + (1.0,)) if fit_prefill_step else (_LOWER, _UPPER)
    for start_eff in ((0.7, 0.5, 0.7), (0.4, 0.2, 0.1), (0.9, 0.8, 0.9)):
        x0 = [0.3 * quickest, 0.0, *start_eff]
        if fit_prefill_step:
            x0.append(min(base.prefill_step_s, 0.5))
        got = least_squares(residuals, x0, bounds=(lower, upper))
        if best is None or got.cost < best.cost:
            best = got
    assert best is not None
    return params(best.x)


def relative_errors(
    shape: ModelShape, peak: Peak, p: PerfParams, samples: Sequence[Sample]
) -> list[float]:
    """Predicted / measured - 1 for each sample."""
    return [step_seconds(shape, peak, p, s.work) / s.step_s - 1 for s in samples]


@dataclass(frozen=True)
class HeldOut:
    label: str
    measured_s: float
    predicted_s: float

    @property
    def error(self) -> float:
        return self.predicted_s / self.measured_s - 1


def held_out(
    shape: ModelShape,
    peak: Peak,
    samples: Sequence[Sample],
    group: Callable[[Sample], str],
    fixed: PerfParams | None = None,
    always: Callable[[Sample], bool] = lambda s: False,
    fit_prefill_step: bool = False,
) -> list[HeldOut]:
    """Each group predicted by a fit on every other group (samples where `always` holds, e.g.
    a prefill measurement, are never held out)."""
    fits: dict[str, PerfParams] = {}
    out = []
    for s in samples:  # in the samples' order
        if always(s):
            continue
        key = group(s)
        if key not in fits:
            train = [t for t in samples if always(t) or group(t) != key]
            fits[key] = fit(shape, peak, train, fixed, fit_prefill_step)
        out.append(HeldOut(s.label, s.step_s, step_seconds(shape, peak, fits[key], s.work)))
    return out
