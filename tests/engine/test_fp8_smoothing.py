"""Activation smoothing before FP8 (models.fp8_smoothing), on the tiny random model: the fold
leaves the model's function alone, moves an outlier channel's range into the weights, and
build_model smooths only FP8 weights with a tokenizer to calibrate with."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from tokenfactory.engine.config import EngineConfig
from tokenfactory.engine.model_setup import build_model, fp8_calibration_ids
from tokenfactory.kernels import fp8_linear
from tokenfactory.models import fp8_smoothing
from tokenfactory.models.llama import Linear

from .engine_fixtures import TINY, prompts


def _model(dtype: str = "float32", outlier: float | None = None):
    model = build_model(TINY, EngineConfig(dtype=dtype), None)
    model.init_random_weights(seed=1, std=0.1)
    if outlier is not None:  # one channel of every norm's output much larger than the rest
        with torch.no_grad():
            for norm, _ in fp8_smoothing.smoothed_pairs(model):
                norm.weight[5] = outlier
    return model


def _calibration() -> list[int]:
    return [t for p in prompts(4, seed=7, lo=30, hi=60) for t in p]


def _fold(factors) -> None:
    """The weights' half of the smoothing, in high precision (use_fp8 does it as it quantizes)."""
    with torch.no_grad():
        for lin, f in factors.items():
            lin.weight.copy_(lin.weight.float() * f[None, :])


def test_smoothing_keeps_the_model_s_function() -> None:
    model = _model(outlier=20.0)
    ids = torch.tensor(prompts(1, seed=3, lo=40, hi=41)[0])
    before = model.forward_dense(ids)
    factors = fp8_smoothing.smooth(model, _calibration())
    assert len(factors) == 2 * TINY.num_hidden_layers
    _fold(factors)
    after = model.forward_dense(ids)
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)


def test_the_norm_s_rounding_is_in_the_factors() -> None:
    # bf16 norms round norm / s; the factors are what the stored norm really divides by.
    model = _model(dtype="bfloat16", outlier=20.0)
    norms = {
        lin: norm.weight.detach().float().clone()
        for norm, lin in fp8_smoothing.smoothed_pairs(model)
    }
    factors = fp8_smoothing.smooth(model, _calibration())
    for norm, lin in fp8_smoothing.smoothed_pairs(model):
        stored = norm.weight.detach().float()
        assert not torch.equal(stored, norms[lin])
        torch.testing.assert_close(stored * factors[lin], norms[lin], rtol=1e-6, atol=0)


def test_use_fp8_quantizes_the_scaled_weight() -> None:
    model = _model(dtype="bfloat16")
    lin = model.decoder_layers[0].gate_up_proj
    scale = torch.linspace(0.5, 4.0, lin.in_features)
    expected = fp8_linear.Fp8Weight.quantize(lin.weight.detach().float() * scale[None, :])
    lin.use_fp8(scale)
    assert lin.fp8 is not None
    assert torch.equal(lin.fp8.codes.view(torch.uint8), expected.codes.view(torch.uint8))
    assert torch.equal(lin.fp8.scale, expected.scale)


def test_an_outlier_channel_is_scaled_down_and_its_weights_up() -> None:
    model = _model(outlier=20.0)
    norm, lin = fp8_smoothing.smoothed_pairs(model)[0]
    ids = _calibration()
    (x_before,) = fp8_smoothing.input_absmax(model, [lin], ids)
    w_before = lin.weight.detach().abs().amax(dim=0)
    _fold(fp8_smoothing.smooth(model, ids))
    (x_after,) = fp8_smoothing.input_absmax(model, [lin], ids)
    spread = lambda x: float(x.max() / x.median())  # noqa: E731
    assert spread(x_before) > 10  # the planted outlier
    assert spread(x_after) < spread(x_before) / 3
    w_after = lin.weight.detach().abs().amax(dim=0)
    assert float(w_after[5] / w_before[5]) > 3  # the weights took the range over


def test_scales_follow_the_formula_and_leave_idle_channels_alone() -> None:
    x = torch.tensor([4.0, 1.0, 0.0])
    w = torch.tensor([[1.0, 4.0, 2.0], [0.5, 1.0, 1.0]])
    s = fp8_smoothing.smoothing_scales(x, w, alpha=0.5)
    torch.testing.assert_close(s, torch.tensor([2.0, 0.5, 1.0]))  # sqrt(4/1), sqrt(1/4), idle


def test_recording_leaves_no_trace_on_the_linears() -> None:
    model = _model()
    linears = [lin for _, lin in fp8_smoothing.smoothed_pairs(model)]
    fp8_smoothing.input_absmax(model, linears, _calibration())
    assert all("forward" not in vars(m) for m in linears)
    with pytest.raises(ValueError, match="calibration tokens"):
        fp8_smoothing.smooth(model, [])


def test_build_model_smooths_fp8_weights_when_it_can_calibrate() -> None:
    ids = _calibration()
    cfg = EngineConfig(dtype="bfloat16", quantization="fp8")
    plain = build_model(TINY, cfg, None)
    smoothed = build_model(TINY, cfg, None, calibration_ids=ids)
    assert all(m.fp8 is not None for m in smoothed.modules() if isinstance(m, Linear))
    norm = lambda m: m.decoder_layers[0].input_layernorm.weight  # noqa: E731
    assert torch.equal(norm(plain), torch.ones_like(norm(plain)))  # random init: ones
    assert not torch.equal(norm(smoothed), norm(plain))


def test_calibration_tokens_only_for_fp8_with_a_tokenizer() -> None:
    class Chars:
        def encode(self, text: str) -> list[int]:
            return [ord(c) % 256 for c in text]

    fp8 = EngineConfig(quantization="fp8")
    ids = fp8_calibration_ids(fp8, Chars())  # type: ignore[arg-type]
    assert ids is not None and len(ids) > 1000  # the shipped text
    assert fp8_calibration_ids(replace(fp8, quantization=None), Chars()) is None  # type: ignore[arg-type]
    assert fp8_calibration_ids(fp8, None) is None
