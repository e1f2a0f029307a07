"""FP8 weights (kernels.fp8_linear, --quantization fp8): the quantization, the scaled matmul
against its float reference, the model and engine on FP8 weights, and the refusals."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from typer.testing import CliRunner

from tokenfactory.engine.config import EngineConfig
from tokenfactory.engine.engine import Engine
from tokenfactory.engine.model_setup import build_model
from tokenfactory.engine.sampling_params import SamplingParams
from tokenfactory.kernels import fp8_linear
from tokenfactory.kernels.fp8_linear import FP8, FP8_MAX, Fp8UnsupportedError, Fp8Weight
from tokenfactory.models.llama import Linear

from .engine_fixtures import TINY, prompts

# e4m3 keeps 3 mantissa bits: a normal value rounds to within 2^-4 of itself, relatively.
E4M3_REL = 2.0**-4


def test_weight_rows_use_the_whole_e4m3_range() -> None:
    w = torch.randn(48, 64) * torch.logspace(-3, 2, 48)[:, None]
    q = Fp8Weight.quantize(w)
    assert q.codes.dtype is FP8 and q.codes.shape == (48, 64)
    assert q.scale.shape == (1, 48) and q.scale.dtype is torch.float32
    assert torch.equal(q.codes.float().abs().amax(dim=1), torch.full((48,), FP8_MAX))
    deq = q.dequantize()
    # Within e4m3 rounding of each weight (plus the subnormal step near zero).
    bound = w.abs() * E4M3_REL + q.scale.reshape(-1, 1) * 2.0**-9
    assert bool(((deq - w).abs() <= bound).all())


def test_zero_rows_quantize_to_zero_without_nans() -> None:
    w = torch.zeros(16, 32)
    w[3] = torch.randn(32)
    q = Fp8Weight.quantize(w)
    assert not torch.isnan(q.codes.float()).any()
    assert torch.equal(q.dequantize()[0], torch.zeros(32))
    codes, scale = fp8_linear.quantize_rows(torch.zeros(2, 32, dtype=torch.bfloat16))
    assert not torch.isnan(codes.float()).any() and bool((scale > 0).all())


def test_activation_rows_get_their_own_scales() -> None:
    x = (
        torch.randn(5, 64, dtype=torch.bfloat16)
        * torch.tensor([1e-3, 1.0, 30.0, 0.2, 5.0])[:, None].bfloat16()
    )
    codes, scale = fp8_linear.quantize_rows(x)
    assert scale.shape == (5, 1)
    assert torch.equal(codes.float().abs().amax(dim=1), torch.full((5,), FP8_MAX))
    assert torch.allclose(scale.squeeze(1), x.float().abs().amax(dim=1) / FP8_MAX)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_scaled_matmul_is_the_product_of_the_dequantized_operands(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 7, 64, generator=g).to(dtype)
    w = Fp8Weight.quantize(torch.randn(48, 64, generator=g))
    bias = torch.randn(48, generator=g).to(dtype)
    y = fp8_linear.fp8_linear(x, w, bias)
    assert y.shape == (3, 7, 48) and y.dtype is dtype
    codes, scale = fp8_linear.quantize_rows(x.reshape(-1, 64))
    ref = (codes.float() * scale) @ w.dequantize().t() + bias.float()
    tol = 1e-2 if dtype is torch.bfloat16 else 1e-4
    torch.testing.assert_close(y.reshape(-1, 48).float(), ref, rtol=tol, atol=tol)


def test_scaled_matmul_stays_near_the_bf16_matmul() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(9, 256, generator=g)
    w = torch.randn(128, 256, generator=g) / 16
    y = fp8_linear.fp8_linear(x.bfloat16(), Fp8Weight.quantize(w)).float()
    exact = x @ w.t()
    rel = float((y - exact).norm() / exact.norm())
    assert 0 < rel < 2 * E4M3_REL  # quantized, and within two operands' rounding


def _tiny(quantization: str | None, dtype: str = "bfloat16", std: float = 0.3, **model_overrides):
    """The tiny model with random weights (large by default: far from ties), as build_model
    sets it up; the same weights whatever the quantization."""
    model_config = replace(TINY, **model_overrides)
    cfg = EngineConfig(dtype=dtype, num_kv_blocks=256, quantization=quantization)
    model = build_model(model_config, replace(cfg, quantization=None), None)
    model.init_random_weights(seed=1, std=std)
    if quantization == "fp8":
        model.quantize_fp8()  # what build_model does after loading the weights
    return model, cfg


def _param_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def test_build_model_quantizes_when_configured() -> None:
    model = build_model(TINY, EngineConfig(dtype="bfloat16", quantization="fp8"), None)
    assert all(m.fp8 is not None for m in model.modules() if isinstance(m, Linear))
    plain = build_model(TINY, EngineConfig(dtype="bfloat16"), None)
    assert all(m.fp8 is None for m in plain.modules() if isinstance(m, Linear))


def test_model_linears_hold_fp8_codes_and_about_half_the_bytes() -> None:
    bf16, _ = _tiny(None)
    fp8, _ = _tiny("fp8")
    linears = [m for m in fp8.modules() if isinstance(m, Linear)]
    assert linears and all(m.fp8 is not None and m.weight.dtype is FP8 for m in linears)
    assert fp8.embed_tokens.weight.dtype is torch.bfloat16  # tied lm_head: stays bf16
    lin_bytes = {
        name: sum(p.numel() * p.element_size() for n, p in model.named_parameters() if "proj" in n)
        for name, model in (("bf16", bf16), ("fp8", fp8))
    }
    # Codes are half of bf16; the per-channel scales add 4 bytes per output row.
    rows = sum(m.out_features for m in linears)
    assert lin_bytes["fp8"] == lin_bytes["bf16"] // 2 + 4 * rows
    assert _param_bytes(fp8) < _param_bytes(bf16)


def test_untied_lm_head_is_quantized_too() -> None:
    model, _ = _tiny("fp8", tie_word_embeddings=False)
    assert model.lm_head is not None and model.lm_head.fp8 is not None
    hidden = torch.randn(3, TINY.hidden_size, dtype=torch.bfloat16)
    expected = fp8_linear.fp8_linear(hidden, model.lm_head.fp8)
    assert torch.equal(model.compute_logits(hidden), expected)


def test_fp8_logits_follow_the_bf16_model() -> None:
    # Weights small enough that two layers do not amplify rounding chaotically.
    bf16, _ = _tiny(None, std=0.1)
    fp8, _ = _tiny("fp8", std=0.1)
    ids = torch.tensor(prompts(1, seed=3, lo=40, hi=41)[0])
    a = bf16.forward_dense(ids).float()
    b = fp8.forward_dense(ids).float()
    rel = float((a - b).norm() / a.norm())
    assert 0 < rel < 0.2  # 0.09 measured: e4m3 rounding of weights and activations
    assert float((a.argmax(-1) == b.argmax(-1)).float().mean()) >= 0.8


@pytest.mark.parametrize("static_decode", [False, True])
def test_engine_generates_on_fp8_weights(static_decode: bool) -> None:
    """Eager and over the static, bucket-padded decode buffers that CUDA graphs capture."""
    model, cfg = _tiny("fp8")
    cfg.static_decode = static_decode
    cfg.attention_backend = "torch"
    engine = Engine(model, None, cfg, model_name="tiny-fp8")
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    batch = prompts(6, seed=4)
    together = engine.generate(batch, params)
    alone = engine.generate(batch[:1], params)[0]
    assert all(len(r.token_ids) == 12 for r in together)
    assert together[0].token_ids == alone.token_ids  # per-token scales: rows independent


def test_q4_weights_are_not_attached_over_fp8() -> None:
    model, _ = _tiny("fp8")
    assert model.attach_q4_weights({"model.layers.0.mlp.down_proj.weight": object()}) == 0  # type: ignore[dict-item]
    assert model.row_exact_decode_rows() is None


def test_float16_is_refused_with_the_requirement() -> None:
    with pytest.raises(Fp8UnsupportedError, match="bfloat16"):
        _tiny("fp8", dtype="float16")


def test_an_old_gpu_is_refused_naming_compute_capability(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A100")
    with pytest.raises(Fp8UnsupportedError, match=r"compute capability 8\.9.*A100 has 8\.0"):
        fp8_linear.check_supported(torch.device("cuda"), torch.bfloat16)


def test_cuda_shapes_must_be_multiples_of_16() -> None:
    fp8_linear.check_shape(960, 576, torch.device("cuda"))
    fp8_linear.check_shape(10, 7, torch.device("cpu"))
    with pytest.raises(Fp8UnsupportedError, match="multiples of 16"):
        fp8_linear.check_shape(100, 576, torch.device("cuda"))


def test_config_and_command_line_refuse_unknown_quantizations() -> None:
    with pytest.raises(ValueError, match="quantization must be fp8"):
        EngineConfig(quantization="int4")
    from tokenfactory.cli import app

    result = CliRunner().invoke(app, ["generate", "--quantization", "int4", "hello"])
    assert result.exit_code == 2
    assert "--quantization must be fp8" in result.output


def test_random_weights_cannot_overwrite_fp8_codes() -> None:
    model, _ = _tiny("fp8")
    with pytest.raises(ValueError, match="before FP8 quantization"):
        model.init_random_weights()
