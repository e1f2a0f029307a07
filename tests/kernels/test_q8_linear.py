"""q8_linear: the logits on GGUF Q8_0 weights, bit for bit the bf16 kernel, row by row."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch

from tokenfactory.kernels import _build, native, q8_linear, skinny
from tokenfactory.kernels.q8_linear import Q8Weight
from tokenfactory.kernels.skinny import skinny_linear
from tokenfactory.models.config import ModelConfig
from tokenfactory.models.llama import LlamaForCausalLM

needs_native = pytest.mark.skipif(
    not (skinny._REQUIRED_CPU <= _build.cpu_flags() and native.load()),
    reason="the Q8_0 kernel needs a CPU with AVX512-BF16 and the native library",
)

pytestmark = pytest.mark.usefixtures("fresh_skinny")


def _q8_weight(n: int, k: int, seed: int = 0) -> tuple[Q8Weight, torch.Tensor]:
    """Random weights quantized to Q8_0 by gguf, and gguf's own dequantization (float32)."""
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((n, k)) / k**0.5).astype(np.float32)
    raw = gguf.quants.quantize(w, gguf.GGMLQuantizationType.Q8_0)
    ref = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType.Q8_0).reshape(n, k)
    return Q8Weight.from_gguf_blocks(raw), torch.from_numpy(np.array(ref, dtype=np.float32))


def test_layout_dequantizes_exactly_as_gguf() -> None:
    q, ref = _q8_weight(33, 96)
    assert q.shape == (33, 96)
    assert q.codes.dtype == torch.int8 and q.codes.shape == (33, 96)
    assert q.d.dtype == torch.float32 and q.d.shape == (33, 3)
    assert torch.equal(q.dequantize(), ref)
    with pytest.raises(ValueError, match="not Q8_0"):
        Q8Weight.from_gguf_blocks(np.zeros((4, 33), dtype=np.uint8))


@needs_native
@pytest.mark.parametrize("m", [1, 2, 3, 8, 9, 16, 17, 33])
@pytest.mark.parametrize("n,k", [(1, 32), (17, 96), (129, 576), (1000, 576)])
@pytest.mark.parametrize("bias", [False, True])
def test_each_row_is_bit_for_bit_the_bf16_kernel_on_that_row_alone(
    m: int, n: int, k: int, bias: bool
) -> None:
    q, w32 = _q8_weight(n, k, seed=m)
    g = torch.Generator().manual_seed(m)
    x = torch.randn(m, k, generator=g).bfloat16()
    b = torch.randn(n, generator=g).bfloat16() if bias else None
    y = q8_linear.q8_linear(x, q, b)
    assert y is not None and y.dtype == torch.bfloat16 and y.shape == (m, n)
    w = w32.bfloat16()
    for i in range(m):
        assert torch.equal(y[i : i + 1], skinny_linear(x[i : i + 1], w, b)), f"row {i}"


@needs_native
def test_calls_it_does_not_take_return_none() -> None:
    q, _ = _q8_weight(16, 64)
    assert q8_linear.q8_linear(torch.randn(skinny.MAX_M + 1, 64).bfloat16(), q) is None
    assert q8_linear.q8_linear(torch.randn(1, 64), q) is None  # float32
    assert q8_linear.q8_linear(torch.randn(1, 32).bfloat16(), q) is None  # wrong K
    assert q8_linear.q8_linear(torch.randn(64, 2).bfloat16().t(), q) is None  # strided rows


@needs_native
def test_decode_logits_read_the_q8_head_with_the_same_values() -> None:
    config = ModelConfig(
        architecture="llama",
        vocab_size=300,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config).bfloat16()
    q, w32 = _q8_weight(300, 64)
    with torch.no_grad():
        model.embed_tokens.weight.copy_(w32.bfloat16())
    model.attach_q4_weights({"model.embed_tokens.weight": q})
    assert model.lm_head_q8 is q
    hidden = torch.randn(3, 64).bfloat16()
    with torch.inference_mode():
        for i in range(3):
            row = hidden[i : i + 1]
            assert torch.equal(model.compute_logits(row, True), model.compute_logits(row))
        assert torch.equal(model.compute_logits(hidden, True), q8_linear.q8_linear(hidden, q))


def test_disabled_native_code_means_no_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(_build.DISABLE_ENV, "1")
    q, _ = _q8_weight(16, 64)
    assert not q8_linear.available()
    assert q8_linear.q8_linear(torch.randn(1, 64).bfloat16(), q) is None
