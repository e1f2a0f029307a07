"""The `tier` policy's load model: what a set of requests needs from the engine, as a busy
share of its time, if each keeps its promise (a fluid estimate from the step-time model)."""

from __future__ import annotations

from dataclasses import dataclass

from tokenfactory.scheduling.step_model import StepCoefficients
from tokenfactory.scheduling.tier.config import TierPolicyConfig
from tokenfactory.tiers import Promise


@dataclass
class Load:
    """What a set of requests needs from the engine, summed so that sets merge in O(1)."""

    max_speed: float = 0.0  # fastest promise (tokens/s), 0 when none
    decode_s: float = 0.0  # seconds per second of decode work at the promised speeds
    best_effort_s: float = 0.0  # decode seconds per step of the best-effort requests
    prefill_s: float = 0.0  # seconds per second of prompt work, each spread over its TTFT
    count: int = 0  # requests summed

    def add(self, other: Load, sign: float = 1.0) -> None:
        self.count += int(sign) * other.count
        self.max_speed = max(self.max_speed, other.max_speed)
        self.decode_s += sign * other.decode_s
        self.best_effort_s += sign * other.best_effort_s
        self.prefill_s += sign * other.prefill_s


def request_load(
    level: Promise,
    num_tokens: int,
    pending: int,
    coef: StepCoefficients,
    config: TierPolicyConfig,
) -> Load:
    """One request's load at `level`: its decode at the promised pace over a context of
    `num_tokens`, and its `pending` prompt tokens spread over its TTFT."""
    per_token = coef.per_decode_s + coef.per_kv_token_s * num_tokens
    load = Load(count=1)
    if level.tokens_per_s is None:
        load.best_effort_s = per_token
    else:
        load.max_speed = level.tokens_per_s
        load.decode_s = level.tokens_per_s * config.pace * per_token
    if pending > 1:
        ttft = level.ttft_s or config.best_effort_ttft_s
        load.prefill_s = coef.per_prefill_token_s * pending / ttft
    return load


def busy_share(load: Load, coef: StepCoefficients, config: TierPolicyConfig) -> float:
    """Steps must come as often as the fastest promise needs, each paying the fixed cost;
    every promised token costs its decode; best-effort requests get their share of those
    steps; prompts still to run must be done within their TTFT."""
    rate = load.max_speed * config.pace if load.max_speed > 0 else 1.0 / config.max_step_s
    return (
        rate * coef.base_s
        + load.decode_s
        + config.min_share * rate * load.best_effort_s
        + load.prefill_s
    )


def busy_share_with(
    base: Load, own: Load, coef: StepCoefficients, config: TierPolicyConfig
) -> float:
    """Busy share with a request of load `own` added to `base`: the worse of its two phases,
    its prompt (spread over its TTFT) and its decode (its promise sets the step rate from then
    on)."""
    decode = Load()
    decode.add(own)
    decode.prefill_s = 0.0
    worst = 0.0
    for phase in (Load(prefill_s=own.prefill_s), decode):
        load = Load()
        load.add(base)
        load.add(phase)
        worst = max(worst, busy_share(load, coef, config))
    return worst
