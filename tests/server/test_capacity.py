"""The hardware probe's cache: kept while the machine agrees with it, measured again otherwise."""

from __future__ import annotations

import json

import pytest

from tests.engine.engine_fixtures import tiny_engine
from tokenfactory.server.capacity import Capacity, CapacityPoint, load_or_measure


def _capacity(step_s: float, batches: tuple[int, ...] = (1, 4)) -> Capacity:
    points = [CapacityPoint(b, step_s * (1 + b / 10), 1 / step_s, b / step_s) for b in batches]
    return Capacity("m", "cpu", "x", "2026-11-26T21:56:00+00:00", points, 32, 0.2)


@pytest.mark.parametrize(
    ("now_s", "agrees"),
    [(0.020, True), (0.029, True), (0.014, True), (0.031, False), (0.013, False), (2.0, False)],
)
def test_a_probe_agrees_with_a_step_timed_now_within_the_factor_either_way(now_s, agrees):
    cap = _capacity(0.020 / 1.1, batches=(4, 1, 16))  # smallest batch: 1, step 20 ms
    assert cap.smallest_batch.batch == 1
    assert cap.agrees_with(now_s, factor=1.5) is agrees


@pytest.fixture(scope="module")
def engine():
    return tiny_engine(max_num_seqs=8)


def _cache_file(tmp_path):
    (path,) = tmp_path.glob("capacity-*.json")
    return path


def test_a_cached_probe_that_still_agrees_is_kept_and_checked(engine, tmp_path):
    first = load_or_measure(engine, tmp_path, "tiny", batches=(1, 2))
    assert not first.cached and first.recheck_step_s is None
    before = _cache_file(tmp_path).read_text()
    # A generous factor: the tiny model's ~1 ms steps jitter; the default is pinned below.
    again = load_or_measure(engine, tmp_path, "tiny", batches=(1, 2), recheck_factor=50)
    assert again.cached and again.measured_at == first.measured_at
    assert again.recheck_step_s is not None and again.recheck_step_s > 0
    assert _cache_file(tmp_path).read_text() == before
    assert not engine.has_unfinished()


def test_a_cached_probe_from_a_busy_machine_is_measured_again(engine, tmp_path, caplog):
    load_or_measure(engine, tmp_path, "tiny", batches=(1, 2))
    path = _cache_file(tmp_path)
    doc = json.loads(path.read_text())
    # As if probed while something else held the cores: every step 1,000x slower.
    for p in doc["points"]:
        p["step_s"] *= 1000
        p["tokens_per_s_per_user"] /= 1000
        p["tokens_per_s"] /= 1000
    doc["measured_at"] = "2026-11-26T21:56:00+00:00"
    path.write_text(json.dumps(doc))
    with caplog.at_level("WARNING"):
        cap = load_or_measure(engine, tmp_path, "tiny", batches=(1, 2))
    assert not cap.cached and cap.measured_at != doc["measured_at"]
    assert "measuring again" in caplog.text
    rewritten = json.loads(path.read_text())
    assert rewritten["measured_at"] == cap.measured_at
    assert rewritten["points"][0]["step_s"] < doc["points"][0]["step_s"] / 100
    assert not engine.has_unfinished()


def test_a_cached_probe_from_a_slower_engine_is_measured_again(engine, tmp_path):
    load_or_measure(engine, tmp_path, "tiny", batches=(1, 2))
    path = _cache_file(tmp_path)
    doc = json.loads(path.read_text())
    for p in doc["points"]:  # the engine has since become 1,000x faster
        p["step_s"] /= 1000
    path.write_text(json.dumps(doc))
    assert not load_or_measure(engine, tmp_path, "tiny", batches=(1, 2)).cached


@pytest.mark.parametrize("content", ["{not json", '{"points": []}', '{"model": 1}'])
def test_an_unreadable_or_empty_cache_is_measured_again(engine, tmp_path, content):
    load_or_measure(engine, tmp_path, "tiny", batches=(1, 2))
    path = _cache_file(tmp_path)
    path.write_text(content)
    cap = load_or_measure(engine, tmp_path, "tiny", batches=(1, 2))
    assert not cap.cached and cap.points
    assert json.loads(path.read_text())["points"]


def test_remeasure_ignores_the_cache(engine, tmp_path):
    first = load_or_measure(engine, tmp_path, "tiny", batches=(1, 2))
    again = load_or_measure(engine, tmp_path, "tiny", batches=(1, 2), remeasure=True)
    assert not again.cached and again.recheck_step_s is None
    assert again.measured_at >= first.measured_at
    # Both idle TTFTs are timed: a prompt an eighth as long as the main one, too.
    assert again.short_ttft_prompt_tokens == again.ttft_prompt_tokens // 8
    assert again.short_ttft_s is not None and again.short_ttft_s > 0


def test_the_probe_gives_the_step_model_a_starting_point_for_this_hardware():
    # The H200 run of 2026-11-27 (Llama-3.1-8B, random weights): 5.05 ms alone, 10.58 ms at
    # 256 sequences, 12 ms to the first token of a 256-token prompt.
    steps = {1: 0.00505, 16: 0.00548, 64: 0.00587, 128: 0.00721, 256: 0.01058}
    points = [CapacityPoint(b, s, 1 / s, b / s) for b, s in steps.items()]
    cap = Capacity("m", "cuda:0", "x", "2026-11-27T17:32:16+00:00", points, 256, 0.012)
    prior = cap.step_prior()
    assert prior.base_s == pytest.approx(0.005, rel=0.05)
    assert prior.per_decode_s == pytest.approx(2.1e-5, rel=0.1)  # not the CPU guess's 2 ms
    assert prior.per_prefill_token_s == pytest.approx((0.012 - 0.005) / 256, rel=0.1)
    assert prior.per_kv_token_s == 0.0 and prior.prefill_step_s == 0.0
    # With a 32-token prompt's TTFT too (8 ms), a prompt token is the difference over the
    # 224 tokens between them, and a step with prompt tokens pays the rest of the short one.
    both = Capacity("m", "cuda:0", "x", "t", points, 256, 0.012,
                    short_ttft_prompt_tokens=32, short_ttft_s=0.008).step_prior()
    assert both.per_prefill_token_s == pytest.approx(0.004 / 224)
    step = both.base_s + both.per_decode_s
    assert both.prefill_step_s == pytest.approx(0.008 - step - 32 * 0.004 / 224)
    assert both.prefill_step_s > 0.002
    # One batch size: no slope to read, the whole step is the fixed cost.
    alone = Capacity("m", "cpu", "x", "t", points[:1], 256, 0.2).step_prior()
    assert alone.per_decode_s == 0.0 and alone.base_s == pytest.approx(0.00505)
    # A probe whose larger batches came out faster (noise) never yields a negative cost.
    noisy = [CapacityPoint(1, 0.02, 50, 50), CapacityPoint(8, 0.018, 55, 440)]
    flat = Capacity("m", "cpu", "x", "t", noisy, 32, 0.001).step_prior()
    assert flat.per_decode_s == 0.0 and flat.per_prefill_token_s == 0.0 and flat.base_s > 0


def test_the_probe_cache_is_keyed_by_the_weights_quantization():
    # FP8 weights decode at another speed than bf16: a bf16 probe must not be reused for them.
    from types import SimpleNamespace

    import torch

    from tokenfactory.engine.config import EngineConfig
    from tokenfactory.server.capacity import probe_key

    def engine(quantization):
        return SimpleNamespace(
            model_name="m", device=torch.device("cpu"), dtype=torch.bfloat16,
            config=EngineConfig(quantization=quantization),
        )

    assert probe_key(engine(None), "id") != probe_key(engine("fp8"), "id")
    assert probe_key(engine("fp8"), "id") == probe_key(engine("fp8"), "id")
