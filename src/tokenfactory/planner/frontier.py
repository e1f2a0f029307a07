"""The throughput/speed frontier: tokens/s per chip and per megawatt against tokens/s per user.

Each point is a steady state at one batch size: every step decodes `batch` sequences at the
workload's mean context and computes the prompts of the requests that replace the finished
ones, so a request's prompt costs what it costs on the real engine (mixed steps). With
speculation, each sequence also verifies k draft tokens a step and emits the expected
accepted run (scheduling/acceptance.py); the speculative frontier is the best over k.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from tokenfactory.planner.hardware import Hardware
from tokenfactory.planner.perf_model import Peak, StepWork, step_seconds
from tokenfactory.planner.shapes import ModelShape
from tokenfactory.scheduling.acceptance import expected_tokens
from tokenfactory.tiers import MICRO, TierCatalog

KV_MEMORY_SHARE = 0.9  # of the memory left after the weights (activations, fragmentation)
MAX_BATCH = 1024
MAX_DRAFT = 8


@dataclass(frozen=True)
class Workload:
    input_tokens: float  # mean prompt length
    output_tokens: float  # mean completion length
    prefill_chunk: int = 2048  # prompt tokens one step computes at most

    @property
    def mean_context(self) -> float:
        return self.input_tokens + self.output_tokens / 2


@dataclass(frozen=True)
class Point:
    batch: int
    draft_tokens: int  # per sequence per step (0: no speculation)
    step_s: float
    tokens_per_step: float  # per sequence
    tokens_per_s_per_user: float
    tokens_per_s: float  # the chip's output tokens/s
    tokens_per_s_per_mw: float
    requests_per_s: float


@dataclass(frozen=True)
class Machine:
    """One model on one chip at one weight format."""

    shape: ModelShape
    hardware: Hardware
    weights: str = "bf16"

    @property
    def peak(self) -> Peak:
        return Peak(self.hardware.bandwidth, self.hardware.flops_per_s(self.weights))

    def max_batch(self, load: Workload) -> int:
        """Sequences whose whole KV (prompt and completion) fits beside the weights."""
        room = self.hardware.memory_gb * 1e9 - self.shape.weight_bytes
        per_seq = self.shape.kv_bytes_per_token * (load.input_tokens + load.output_tokens)
        return max(0, min(MAX_BATCH, math.floor(KV_MEMORY_SHARE * room / per_seq)))

    def point(self, batch: int, load: Workload, acceptance: float = 0.0, k: int = 0) -> Point:
        tau = expected_tokens(acceptance, k) if k else 1.0
        # Requests finish at batch * tau / output tokens a step; their replacements' prompts
        # are computed in the same steps.
        arrivals = batch * tau / load.output_tokens
        prefill_tokens = arrivals * load.input_tokens
        chunks = math.ceil(load.input_tokens / load.prefill_chunk)
        prefill_share = min(1.0, arrivals * chunks)  # steps that compute any prompt token
        params = self.hardware.params
        work = StepWork(
            seqs=batch,
            context=load.mean_context,
            prefill_tokens=prefill_tokens,
            draft_tokens=batch * k,
            prefill_context=load.input_tokens / 2,
        )
        step = step_seconds(self.shape, self.peak, replace(params, prefill_step_s=0.0), work)
        step += prefill_share * params.prefill_step_s
        per_user = tau / step
        total = batch * per_user
        return Point(
            batch=batch,
            draft_tokens=k,
            step_s=step,
            tokens_per_step=tau,
            tokens_per_s_per_user=per_user,
            tokens_per_s=total,
            tokens_per_s_per_mw=total / (self.hardware.power_w / 1e6),
            requests_per_s=total / load.output_tokens,
        )


def batch_grid(limit: int) -> list[int]:
    """1, 2, 3, 4, 6, 8, 12, 16, ... up to `limit` (and `limit` itself)."""
    out: set[int] = set()
    b = 1
    while b <= limit:
        out.update(x for x in (b, b + b // 2) if x <= limit)
        b *= 2
    if limit >= 1:
        out.add(limit)
    return sorted(out)


def pareto(points: list[Point]) -> list[Point]:
    """The points no other point beats on both speed per user and throughput, fastest first."""
    best: list[Point] = []
    for p in sorted(points, key=lambda p: (-p.tokens_per_s_per_user, -p.tokens_per_s)):
        if not best or p.tokens_per_s > best[-1].tokens_per_s:
            best.append(p)
    return best


def frontier(machine: Machine, load: Workload, acceptance: float | None = None) -> list[Point]:
    """Plain decoding at every batch size, or with speculation the best over draft depths."""
    limit = machine.max_batch(load)
    grid = batch_grid(limit)
    if acceptance is None:
        return pareto([machine.point(b, load) for b in grid])
    points = [machine.point(b, load, acceptance, k) for b in grid for k in range(MAX_DRAFT + 1)]
    return pareto(points)


@dataclass(frozen=True)
class TierPlacement:
    tier: str
    promise_tokens_per_s: float
    point: Point | None  # the most throughput that still keeps the promise; None: out of reach
    usd_per_hour: float  # if the chip served only this tier at that point
    usd_per_hour_per_mw: float


def revenue_per_s(catalog: TierCatalog, tier: str, load: Workload, requests_per_s: float) -> float:
    t = catalog[tier]
    # Prices are micro-dollars per million tokens.
    micro_usd = (t.input_price * load.input_tokens + t.output_price * load.output_tokens) / MICRO
    return requests_per_s * micro_usd / 1e6


def place_tiers(
    points: list[Point], catalog: TierCatalog, load: Workload, power_w: float
) -> list[TierPlacement]:
    out = []
    for tier in catalog.tiers:
        speed = tier.tokens_per_s
        ok = [p for p in points if p.tokens_per_s_per_user >= speed]
        best = max(ok, key=lambda p: p.tokens_per_s, default=None)
        usd = 0.0 if best is None else 3600 * revenue_per_s(
            catalog, tier.name, load, best.requests_per_s
        )
        out.append(TierPlacement(tier.name, speed, best, usd, usd / (power_w / 1e6)))
    return out
