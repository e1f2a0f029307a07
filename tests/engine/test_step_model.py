"""Step-time model: priors before data, recovery of synthetic coefficients, sliding window."""

from __future__ import annotations

import numpy as np
import pytest

from tokenfactory.engine.stats import StatsLog, StepStats
from tokenfactory.engine.step_model import CPU_PRIOR, StepCoefficients, StepTimeModel

TRUE = StepCoefficients(
    base_s=0.01, per_decode_s=0.003, per_prefill_token_s=0.0004, per_kv_token_s=5e-7
)


def synthetic_steps(coef: StepCoefficients, n: int, seed: int = 0, noise: float = 0.0):
    rng = np.random.default_rng(seed)
    for _ in range(n):
        decode = int(rng.integers(0, 64))
        prefill = int(rng.integers(0, 512)) if rng.random() < 0.5 else 0
        kv = int(decode * rng.integers(16, 600) + prefill)
        t = coef.predict(decode, prefill, kv) * (1 + noise * rng.standard_normal())
        yield t, decode, prefill, kv


def test_prior_before_data():
    model = StepTimeModel(skip_first=0)
    assert model.coefficients == CPU_PRIOR
    assert model.predict(10, 100, 1000) == pytest.approx(CPU_PRIOR.predict(10, 100, 1000))


def test_recovers_synthetic_coefficients():
    model = StepTimeModel(skip_first=0)
    for t, d, p, kv in synthetic_steps(TRUE, 400, noise=0.02):
        model.observe(t, d, p, kv)
    got = model.coefficients
    assert got.base_s == pytest.approx(TRUE.base_s, rel=0.15)
    assert got.per_decode_s == pytest.approx(TRUE.per_decode_s, rel=0.15)
    assert got.per_prefill_token_s == pytest.approx(TRUE.per_prefill_token_s, rel=0.1)
    assert got.per_kv_token_s == pytest.approx(TRUE.per_kv_token_s, rel=0.25)
    assert model.predict(32, 0, 32 * 300) == pytest.approx(TRUE.predict(32, 0, 32 * 300), rel=0.05)


def test_learns_the_fixed_cost_of_a_step_that_computes_prompt_tokens():
    # Decode-only steps take a faster path than mixed ones: one fixed cost per prefill step.
    mixed = StepCoefficients(0.02, 0.001, 0.0005, 1e-7, prefill_step_s=0.03)
    model = StepTimeModel(skip_first=0)
    for t, d, p, kv in synthetic_steps(mixed, 400, noise=0.02):
        model.observe(t, d, p, kv)
    got = model.coefficients
    assert got.prefill_step_s == pytest.approx(0.03, rel=0.15)
    assert got.base_s == pytest.approx(0.02, rel=0.15)
    # a small prompt chunk costs the fixed cost, not just its tokens
    assert model.predict(4, 16, 800) - model.predict(4, 0, 800) == pytest.approx(
        0.03 + 16 * 0.0005, rel=0.15
    )


def test_sliding_window_follows_a_change():
    model = StepTimeModel(window=200, skip_first=0)
    for t, d, p, kv in synthetic_steps(TRUE, 300, seed=1):
        model.observe(t, d, p, kv)
    slower = StepCoefficients(0.05, 0.006, 0.0008, 1e-6)
    for t, d, p, kv in synthetic_steps(slower, 300, seed=2):
        model.observe(t, d, p, kv)
    assert model.predict(20, 100, 5000) == pytest.approx(slower.predict(20, 100, 5000), rel=0.02)


def test_skips_warmup_and_bad_durations_and_never_goes_negative():
    model = StepTimeModel(skip_first=2)
    model.observe(100.0, 1, 0, 10)  # warm-up steps are ignored
    model.observe(100.0, 1, 0, 10)
    model.observe(float("nan"), 1, 0, 10)
    model.observe(0.0, 1, 0, 10)
    assert model.num_observed == 0 and model.coefficients == CPU_PRIOR
    # Data where more decodes look faster must not yield a negative per-decode cost.
    for i in range(50):
        model.observe(0.05 - 0.0005 * i, i, 0, 0)
    c = model.coefficients
    assert min(c.base_s, c.per_decode_s, c.per_prefill_token_s, c.per_kv_token_s) >= 0


def test_observe_step_reads_step_stats():
    model = StepTimeModel(skip_first=0, prior_weight=1e-6)
    for t, d, p, kv in synthetic_steps(TRUE, 100, seed=3):
        stats = StepStats(0.0, t, d + (p > 0), d, p, kv, d, 0, 0, d, 0.1)
        model.observe_step(stats)
    assert model.num_observed == 100
    assert model.predict(8, 64, 2000) == pytest.approx(TRUE.predict(8, 64, 2000), rel=1e-3)


def test_from_steps_fits_a_stats_log():
    log = StatsLog()
    for t, d, p, kv in synthetic_steps(TRUE, 200, seed=4):
        log.record(StepStats(0.0, t, d + (p > 0), d, p, kv, d, 0, 0, d, 0.1))
    model = StepTimeModel.from_steps(log.recent(), prior_weight=1e-6)
    assert model.num_observed == 200
    assert model.predict(16, 0, 4000) == pytest.approx(TRUE.predict(16, 0, 4000), rel=1e-3)
