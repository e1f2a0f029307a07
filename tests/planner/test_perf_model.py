"""The step-time model: its arithmetic on a synthetic chip, and the fit recovering known
parameters from steps it made itself."""

from __future__ import annotations

import math

import pytest

from tokenfactory.planner.calibrate import fit_report
from tokenfactory.planner.perf_model import (
    Peak,
    PerfParams,
    Sample,
    StepWork,
    fit,
    held_out,
    step_seconds,
)
from tokenfactory.planner.shapes import model_shape

PEAK = Peak(bandwidth=1e12, flops=1e15)
EXACT = PerfParams(base_s=0.0, memory_efficiency=1.0, compute_efficiency=1.0)


def test_one_sequence_reads_the_weights_and_its_kv(shape):
    # 1 GB of weights + 1,000 tokens x 1 MB of KV at 1 TB/s = 2 ms; 2 GFLOP at 1 PFLOP/s is
    # 2 us, which the 2-norm adds almost nothing to.
    t = step_seconds(shape, PEAK, EXACT, StepWork(seqs=1, context=1000))
    assert t == pytest.approx(math.hypot(2e-3, 2e-6))


def test_fixed_costs_add_up(shape):
    p = PerfParams(base_s=0.01, per_seq_s=0.001, memory_efficiency=1.0, compute_efficiency=1.0,
                   prefill_step_s=0.1, per_draft_token_s=0.5)
    plain = step_seconds(shape, PEAK, EXACT, StepWork(seqs=4, context=0))
    both = step_seconds(
        shape, PEAK, p, StepWork(seqs=4, context=0, prefill_tokens=1, draft_tokens=2)
    )
    # Fixed: 0.01 + 4 x 0.001 + 0.1 (a prompt token) + 2 x 0.5 (drafts); the work term grows a
    # little with the three extra rows.
    assert both - plain == pytest.approx(0.01 + 0.004 + 0.1 + 1.0, rel=1e-3)


def test_lower_efficiency_is_slower_and_large_batches_become_compute_bound(shape):
    half = PerfParams(base_s=0.0, memory_efficiency=0.5, compute_efficiency=1.0)
    w = StepWork(seqs=1, context=0)
    assert step_seconds(shape, PEAK, half, w) == pytest.approx(
        2 * step_seconds(shape, PEAK, EXACT, w), rel=1e-3
    )
    # 10,000 rows x 2 GFLOP = 20 ms of arithmetic against a 1 ms weight read.
    big = step_seconds(shape, PEAK, EXACT, StepWork(seqs=10_000, context=0))
    assert big == pytest.approx(math.hypot(1e-3, 20e-3))


def _synthetic(shape, truth: PerfParams) -> list[Sample]:
    out = []
    for ctx in (100, 1000):
        for b in (1, 4, 16, 64, 256, 1024):
            w = StepWork(seqs=b, context=ctx)
            out.append(Sample(w, step_seconds(shape, PEAK, truth, w), f"batch {b}, ctx {ctx}"))
    return out


def test_the_fit_recovers_steps_made_by_known_parameters(shape):
    truth = PerfParams(base_s=0.002, per_seq_s=1e-5, memory_efficiency=0.6,
                       compute_efficiency=0.4, kv_efficiency=0.1)
    samples = _synthetic(shape, truth)
    got = fit(shape, PEAK, samples)
    for s in samples:
        assert step_seconds(shape, PEAK, got, s.work) == pytest.approx(s.step_s, rel=0.02)
    # The fixed cost and the weights' read are both paid once a step: only their sum shows.
    def fixed(p: PerfParams) -> float:
        return p.base_s + shape.weight_bytes / (p.memory_efficiency * PEAK.bandwidth)

    assert fixed(got) == pytest.approx(fixed(truth), rel=0.1)
    assert got.kv_share == pytest.approx(0.1, rel=0.1)  # two contexts tell KV from weights


def test_kv_read_at_its_own_efficiency(shape):
    slow_kv = PerfParams(base_s=0.0, memory_efficiency=1.0, compute_efficiency=1.0,
                         kv_efficiency=0.25)
    # 1 GB of weights at 1 TB/s (1 ms) + 1 GB of KV at a quarter of it (4 ms).
    t = step_seconds(shape, PEAK, slow_kv, StepWork(seqs=1, context=1000))
    assert t == pytest.approx(math.hypot(5e-3, 2e-6))


def test_held_out_predicts_each_batch_from_the_others(shape):
    truth = PerfParams(base_s=0.002, per_seq_s=1e-5, memory_efficiency=0.6,
                       compute_efficiency=0.4)
    samples = _synthetic(shape, truth)
    got = held_out(shape, PEAK, samples, lambda s: str(s.work.seqs))
    assert [h.label for h in got] == [s.label for s in samples]
    assert max(abs(h.error) for h in got) < 0.05


def test_a_fit_report_refuses_a_single_group(shape):
    samples = [s for s in _synthetic(shape, EXACT) if s.work.context == 100]
    with pytest.raises(ValueError, match="at least two"):
        fit_report(shape, PEAK, samples, EXACT, hold_out="context")


def test_named_shapes_match_their_parameter_counts():
    llama = model_shape("llama-3.1-8b")
    # 8.03B parameters, less the 0.53B-entry embedding table that is looked up, not read.
    assert llama.weight_bytes == pytest.approx(2 * 7.505e9, rel=0.01)
    assert model_shape("llama-3.1-8b", "fp8").weight_bytes == pytest.approx(
        llama.weight_bytes / 2
    )
    assert llama.kv_bytes_per_token == 2 * 32 * 8 * 128 * 2
    smol = model_shape("embedded")  # tied embeddings: the table is the output layer, read whole
    assert smol.weight_bytes == pytest.approx(2 * 134.5e6, rel=0.02)
    with pytest.raises(ValueError, match="unknown model"):
        model_shape("gpt-5")


def test_a_loaded_models_shape_finds_its_architecture_name():
    import copy

    from tokenfactory.models.architectures import ARCHITECTURES
    from tokenfactory.planner.shapes import architecture_name

    gguf = copy.deepcopy(ARCHITECTURES["smollm2-135m"])
    gguf.name = "Smollm2 135M 8k Lc100K Mix1 Ep2"  # what the embedded GGUF calls itself
    assert architecture_name(gguf) == "smollm2-135m"
    gguf.hidden_size = 1000
    assert architecture_name(gguf) == gguf.name
