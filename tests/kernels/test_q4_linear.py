"""q4_linear: decode linears on GGUF Q4_1 weights with int8 activations (llama.cpp's scheme)."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tokenfactory.kernels import _build, native, q4_linear, skinny
from tokenfactory.kernels.q4_linear import Q4Weight, deinterleave_codes, interleave_codes
from tokenfactory.models.llama import Linear, linear

needs_native = pytest.mark.skipif(
    not (skinny._REQUIRED_CPU <= _build.cpu_flags() and native.load()),
    reason="the Q4_1 kernel needs a CPU with AVX512-BF16 and VNNI and the native library",
)

# (N, K): K = 32 .. 1536 covers one block, a whole group of 16 blocks with and without a tail,
# several groups, and the embedded model's 576 (a group and a tail of 2)
SHAPES = [(1, 32), (7, 64), (17, 96), (100, 576), (33, 512), (9, 544), (129, 1536), (576, 576)]


# Each test sees the kernel as freshly imported, whatever the environment says.
pytestmark = pytest.mark.usefixtures("fresh_skinny")


def _q4_weight(n: int, k: int, seed: int = 0) -> tuple[Q4Weight, torch.Tensor]:
    """Random weights quantized to Q4_1 by gguf, and gguf's own dequantization (float32)."""
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((n, k)) / k**0.5).astype(np.float32)
    raw = gguf.quants.quantize(w, gguf.GGMLQuantizationType.Q4_1)
    ref = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType.Q4_1).reshape(n, k)
    return Q4Weight.from_gguf_blocks(raw), torch.from_numpy(np.array(ref, dtype=np.float32))


def int8_reference(x: torch.Tensor, w32: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """The scheme in float64: each block of 32 of x rounded to int8 steps of max|x| / 127
    (float32 arithmetic, ties to even, as the kernel), then the exact product with w."""
    m, k = x.shape
    blocks = x.float().view(m, k // 32, 32)
    dx = blocks.abs().amax(-1, keepdim=True) / 127
    inv = torch.where(dx != 0, 1.0 / dx, torch.zeros_like(dx))
    qx = torch.round(blocks * inv)
    y = (qx.double() * dx.double()).view(m, k) @ w32.double().T
    return y if bias is None else y + bias.double()


def assert_within_output_rounding(y: torch.Tensor, ref: torch.Tensor) -> None:
    """y (bf16) is ref rounded once to bf16, give or take the float32 sums' own error."""
    err = (y.double() - ref).abs()
    bound = ref.abs() * 2.0**-8 + 1e-3
    assert bool((err <= bound).all()), f"max excess {(err - bound).max().item():.3g}"


def test_layout_dequantizes_exactly_as_gguf() -> None:
    for n, k in SHAPES:
        q, ref = _q4_weight(n, k)
        assert q.shape == (n, k)
        assert q.codes.dtype == torch.uint8 and q.codes.shape == (n, k // 2)
        assert q.dm.dtype == torch.float32 and q.dm.shape == (n, 2, k // 32)
        assert torch.equal(q.dequantize(), ref), (n, k)
    q, ref = _q4_weight(33, 96)
    both = Q4Weight.cat([q, _q4_weight(5, 96, seed=1)[0]])
    assert both.shape == (38, 96)
    assert torch.equal(both.dequantize()[:33], ref)


@pytest.mark.parametrize("nb", [1, 2, 15, 16, 17, 18, 32, 35, 48])
def test_codes_interleave_per_group_of_16_blocks_and_back(nb: int) -> None:
    rng = np.random.default_rng(nb)
    blocks = rng.integers(0, 256, (3, nb, 16), dtype=np.uint8)
    rows = interleave_codes(blocks)
    assert rows.shape == (3, nb * 16)
    assert np.array_equal(deinterleave_codes(rows), blocks)
    full = nb // 16 * 16
    for g in range(0, full, 16):  # lane b of chunk j: bytes 4j .. 4j+3 of block g + b
        for j in range(4):
            for b in range(16):
                at = 16 * g + 64 * j + 4 * b
                assert np.array_equal(rows[:, at : at + 4], blocks[:, g + b, 4 * j : 4 * j + 4])
    assert np.array_equal(rows[:, 16 * full :], blocks[:, full:].reshape(3, -1))  # the tail


def test_rejects_rows_that_are_not_q4_1() -> None:
    with pytest.raises(ValueError, match="not Q4_1"):
        Q4Weight.from_gguf_blocks(np.zeros((4, 21), dtype=np.uint8))
    with pytest.raises(ValueError, match="not Q4_1"):
        Q4Weight.from_gguf_blocks(np.zeros((4, 20), dtype=np.float32))


@needs_native
@pytest.mark.parametrize("m", [1, 2, 3, 5, 8, 16, 17])
@pytest.mark.parametrize("n,k", SHAPES)
@pytest.mark.parametrize("bias", [False, True])
def test_the_product_on_int8_activations(m: int, n: int, k: int, bias: bool) -> None:
    q, w32 = _q4_weight(n, k, seed=m)
    g = torch.Generator().manual_seed(m)
    x = torch.randn(m, k, generator=g).bfloat16()
    b = torch.randn(n, generator=g).bfloat16() if bias else None
    y = q4_linear.q4_linear(x, q, b)
    assert y is not None and y.dtype == torch.bfloat16 and y.shape == (m, n)
    assert_within_output_rounding(y, int8_reference(x, w32, b))
    # and close to the product on unrounded activations
    ref = F.linear(x.float(), w32, None if b is None else b.float())
    torch.testing.assert_close(y.float(), ref, rtol=3e-2, atol=3e-2)


@needs_native
def test_activations_round_per_block_as_the_scheme_says() -> None:
    """Every block of x holds one large value: the small ones round to zero, so the kernel's
    result differs from the plain product, and equals the int8 reference."""
    q, w32 = _q4_weight(64, 576, seed=3)
    g = torch.Generator().manual_seed(3)
    x = (torch.randn(2, 576, generator=g).sign() * 0.15).view(2, 18, 32)
    x[:, :, 7] = 50.0
    x = x.view(2, 576).bfloat16()
    y = q4_linear.q4_linear(x, q)
    assert y is not None
    ref8 = int8_reference(x, w32, None)
    assert_within_output_rounding(y, ref8)
    plain = x.double() @ w32.double().T
    assert ((plain - ref8).abs() > ref8.abs() * 2.0**-6 + 1e-2).sum() > 16  # it discriminates


@needs_native
def test_zero_blocks_and_zero_rows_give_no_nan() -> None:
    q, w32 = _q4_weight(40, 544)
    x = torch.randn(3, 544).bfloat16()
    x[0] = 0
    x[1, 32:96] = 0
    y = q4_linear.q4_linear(x, q)
    assert y is not None and bool(torch.isfinite(y).all())
    assert_within_output_rounding(y, int8_reference(x, w32, None))
    assert torch.equal(y[0], torch.zeros(40, dtype=torch.bfloat16))


@needs_native
@pytest.mark.parametrize("m", [2, 3, 4, 6, 8, 9, 12, 16, 17, 24, 33])
@pytest.mark.parametrize("n,k", [(17, 96), (129, 1536), (576, 576)])
@pytest.mark.parametrize("bias", [False, True])
def test_each_row_of_a_batch_is_bit_for_bit_that_row_alone(
    m: int, n: int, k: int, bias: bool
) -> None:
    """What speculative verification relies on: a forward over M rows (a draft's tokens)
    gives each row exactly what one-row forwards give, whatever M (the passes of 16 rows
    included), so greedy tokens match token by token."""
    q, _ = _q4_weight(n, k, seed=m)
    g = torch.Generator().manual_seed(m)
    x = torch.randn(m, k, generator=g).bfloat16()
    b = torch.randn(n, generator=g).bfloat16() if bias else None
    y = q4_linear.q4_linear(x, q, b)
    assert y is not None and y.shape == (m, n)
    for i in range(m):
        alone = q4_linear.q4_linear(x[i : i + 1], q, b)
        assert alone is not None and torch.equal(y[i : i + 1], alone), f"row {i}"


@needs_native
def test_rows_of_x_need_not_be_packed() -> None:
    q, _ = _q4_weight(40, 64)
    x = torch.randn(3, 128).bfloat16()[:, :64]  # rows 128 elements apart
    y = q4_linear.q4_linear(x, q)
    assert y is not None and torch.equal(y, q4_linear.q4_linear(x.contiguous(), q))


@needs_native
def test_calls_it_does_not_take_return_none() -> None:
    q, _ = _q4_weight(16, 64)
    assert q4_linear.q4_linear(torch.randn(skinny.MAX_M + 1, 64).bfloat16(), q) is None
    assert q4_linear.q4_linear(torch.randn(1, 64), q) is None  # float32
    assert q4_linear.q4_linear(torch.randn(1, 32).bfloat16(), q) is None  # wrong K
    assert q4_linear.q4_linear(torch.randn(64, 2).bfloat16().t(), q) is None  # strided rows


def test_disabled_native_code_means_no_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(_build.DISABLE_ENV, "1")
    q, _ = _q4_weight(16, 64)
    assert not q4_linear.available()
    assert q4_linear.q4_linear(torch.randn(1, 64).bfloat16(), q) is None


def test_the_q4_row_limit_follows_the_cpu_kind(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(skinny, "available", lambda: True)
    for amx, rows in (
        (True, q4_linear.DECODE_MAX_ROWS_AMX),
        (False, q4_linear.DECODE_MAX_ROWS_AVX512),
    ):
        monkeypatch.setattr(skinny, "uses_amx", lambda amx=amx: amx)
        q4_linear._reset()
        assert q4_linear.decode_max_rows() == rows
        assert [m for m in range(1, 80) if q4_linear.reads_q4(m)] == list(range(1, rows + 1))
    monkeypatch.setattr(skinny, "available", lambda: False)
    q4_linear._reset()
    assert q4_linear.decode_max_rows() == 0 and not q4_linear.reads_q4(1)


@needs_native
def test_a_decode_linear_reads_q4_up_to_the_limit_with_rows_independent() -> None:
    """`Linear.forward` in a decode step: rows up to `decode_max_rows()` come from the Q4_1
    kernel, each exactly as when it runs alone (a speculative verify forward over k + 1 rows
    scores every draft token as k + 1 one-row steps would)."""
    q, w32 = _q4_weight(96, 576)
    lin = Linear(576, 96, bias=False).bfloat16()
    with torch.no_grad():
        lin.weight.copy_(w32.bfloat16())
    lin.q4 = q
    limit = q4_linear.decode_max_rows()
    assert limit >= q4_linear.DECODE_MAX_ROWS_AMX
    x = torch.randn(limit + 1, 576).bfloat16()
    with torch.inference_mode():
        y = lin(x[:limit], True)
        assert torch.equal(y, q4_linear.q4_linear(x[:limit], q))
        for i in range(limit):
            assert torch.equal(y[i : i + 1], lin(x[i : i + 1], True)), f"row {i}"
        # past the limit, and in prompt steps, the bf16 weight
        assert torch.equal(lin(x, True), linear(x, lin.weight, None, True))
        assert torch.equal(lin(x[:1]), linear(x[:1], lin.weight, None, False))
