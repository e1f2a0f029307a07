"""The probe's speculative part: measured on the calibration workload, opening tiers plain
decoding cannot serve, and kept in the probe cache."""

from __future__ import annotations

from tests.engine.engine_fixtures import tiny_engine
from tokenfactory.server.capacity import (
    Capacity,
    CapacityPoint,
    load_or_measure,
    probe_policy,
    tier_statuses,
)
from tokenfactory.server.speculative_capacity import (
    SpeculativeCapacity,
    SpeculativePoint,
    measure_speculation,
)
from tokenfactory.tiers import load_tiers


def _capacity(plain_speed: float, spec_speed: float | None) -> Capacity:
    points = [CapacityPoint(1, 1 / plain_speed, plain_speed, plain_speed)]
    spec = None
    if spec_speed is not None:
        spec = SpeculativeCapacity("ngram", "agent", [SpeculativePoint(1, spec_speed, 2.5, 0.7)])
    return Capacity("m", "cpu", "x", "2026-12-06T00:00:00+00:00", points, 32, 0.1,
                    speculation=spec)


def test_a_tier_plain_decoding_cannot_serve_opens_on_speculative_speed():
    catalog = load_tiers(preset="cpu")  # super promises 25 tokens/s
    need = catalog["super"].tokens_per_s * 1.15
    plain = tier_statuses(catalog, _capacity(need * 0.8, None))["super"]
    assert not plain.available and not plain.relies_on_speculation
    slow_spec = tier_statuses(catalog, _capacity(need * 0.8, need * 0.9))["super"]
    assert not slow_spec.available and "Speculative decoding (ngram)" in slow_spec.reason
    spec = tier_statuses(catalog, _capacity(need * 0.8, need * 1.5))
    assert spec["super"].available and spec["super"].relies_on_speculation
    assert spec["super"].max_users_at_promise == 1
    assert spec["free"].available and not spec["free"].relies_on_speculation


def test_measure_speculation_on_an_engine_and_back_to_its_policy(tmp_path):
    engine = tiny_engine(max_num_seqs=8, speculation="ngram", policy="tier")
    engine = type(engine)(engine.model, None, engine.config)  # the proposer from the config
    assert engine.proposer is not None
    with probe_policy(engine, drafts=True):
        spec = measure_speculation(engine, batches=(1, 2))
    assert spec is not None and spec.proposer == "ngram" and spec.workload == "repeating-tokens"
    assert [p.batch for p in spec.points] == [1, 2]
    for p in spec.points:
        assert p.tokens_per_s_per_user > 0 and p.tokens_per_step >= 1.0
        assert 0.0 <= p.acceptance <= 1.0
    assert engine.scheduler.policy.name == "tier" and not engine.has_unfinished()
    # Through the cached probe: written with its speculative part and read back equal.
    first = load_or_measure(engine, tmp_path, "tiny", batches=(1,))
    assert first.speculation is not None
    again = load_or_measure(engine, tmp_path, "tiny", batches=(1,), recheck_factor=100)
    assert again.cached and again.speculation == first.speculation
    assert tiny_engine().proposer is None
    assert measure_speculation(tiny_engine()) is None
