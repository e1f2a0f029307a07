"""q4_linear: decode linears on GGUF Q4_1 weights, bit for bit the bf16 kernel."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tokenfactory.kernels import _build, native, q4_linear, skinny
from tokenfactory.kernels.q4_linear import Q4Weight
from tokenfactory.kernels.skinny import skinny_linear
from tokenfactory.models.llama import Linear

needs_native = pytest.mark.skipif(
    not (skinny._REQUIRED_CPU <= _build.cpu_flags() and native.load()),
    reason="the Q4_1 kernel needs a CPU with AVX512-BF16 and the native library",
)

SHAPES = [(1, 32), (7, 64), (17, 96), (100, 576), (129, 1536), (576, 576)]  # (N, K)


# Each test sees the kernel as freshly imported, whatever the environment says.
pytestmark = pytest.mark.usefixtures("fresh_skinny")


def _q4_weight(n: int, k: int, seed: int = 0) -> tuple[Q4Weight, torch.Tensor]:
    """Random weights quantized to Q4_1 by gguf, and gguf's own dequantization (float32)."""
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((n, k)) / k**0.5).astype(np.float32)
    raw = gguf.quants.quantize(w, gguf.GGMLQuantizationType.Q4_1)
    ref = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType.Q4_1).reshape(n, k)
    return Q4Weight.from_gguf_blocks(raw), torch.from_numpy(np.array(ref, dtype=np.float32))


def test_layout_dequantizes_exactly_as_gguf() -> None:
    q, ref = _q4_weight(33, 96)
    assert q.shape == (33, 96)
    assert q.codes.dtype == torch.uint8 and q.codes.shape == (33, 48)
    assert q.dm.dtype == torch.float32 and q.dm.shape == (33, 3, 2)
    assert torch.equal(q.dequantize(), ref)
    both = Q4Weight.cat([q, _q4_weight(5, 96, seed=1)[0]])
    assert both.shape == (38, 96)
    assert torch.equal(both.dequantize()[:33], ref)


def test_rejects_rows_that_are_not_q4_1() -> None:
    with pytest.raises(ValueError, match="not Q4_1"):
        Q4Weight.from_gguf_blocks(np.zeros((4, 21), dtype=np.uint8))
    with pytest.raises(ValueError, match="not Q4_1"):
        Q4Weight.from_gguf_blocks(np.zeros((4, 20), dtype=np.float32))


@pytest.fixture
def avx512_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """The bf16 kernel on its AVX512 tiles at every row count (the Q4_1 kernel's twin)."""
    if not skinny.available():
        pytest.skip("native kernel unavailable")
    monkeypatch.setattr(skinny, "_amx_min_m", skinny.MAX_M + 1)


@needs_native
@pytest.mark.parametrize("m", [1, 2, 3, 5, 8])
@pytest.mark.parametrize("n,k", SHAPES)
@pytest.mark.parametrize("bias", [False, True])
def test_bit_for_bit_the_bf16_kernel_on_the_dequantized_weight(
    avx512_only: None, m: int, n: int, k: int, bias: bool
) -> None:
    q, w32 = _q4_weight(n, k, seed=m)
    g = torch.Generator().manual_seed(m)
    x = torch.randn(m, k, generator=g).bfloat16()
    b = torch.randn(n, generator=g).bfloat16() if bias else None
    y = q4_linear.q4_linear(x, q, b)
    assert y is not None and y.dtype == torch.bfloat16 and y.shape == (m, n)
    assert torch.equal(y, skinny_linear(x, w32.bfloat16(), b))
    # and within one rounding of the float product
    ref = F.linear(x.float(), w32.bfloat16().float(), None if b is None else b.float())
    torch.testing.assert_close(y.float(), ref, rtol=1e-2, atol=1e-2)


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
    q, w32 = _q4_weight(n, k, seed=m)
    g = torch.Generator().manual_seed(m)
    x = torch.randn(m, k, generator=g).bfloat16()
    b = torch.randn(n, generator=g).bfloat16() if bias else None
    y = q4_linear.q4_linear(x, q, b)
    assert y is not None and y.shape == (m, n)
    w = w32.bfloat16()
    for i in range(m):
        alone = q4_linear.q4_linear(x[i : i + 1], q, b)
        assert alone is not None and torch.equal(y[i : i + 1], alone), f"row {i}"
        # and one row is the bf16 kernel's one-row (AVX512) path on the dequantized weight
        assert torch.equal(alone, skinny_linear(x[i : i + 1], w, b)), f"row {i}"


@needs_native
def test_rows_of_x_need_not_be_packed(avx512_only: None) -> None:
    q, w32 = _q4_weight(40, 64)
    x = torch.randn(3, 128).bfloat16()[:, :64]  # rows 128 elements apart
    y = q4_linear.q4_linear(x, q)
    assert y is not None and torch.equal(y, skinny_linear(x.contiguous(), w32.bfloat16()))


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
    # on one thread without AMX, 5-8 rows read bf16 (the same results: the AVX512 tiles)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    q4_linear._reset()
    assert [m for m in range(1, 34) if q4_linear.reads_q4(m)] == [1, 2, 3, 4, *range(9, 33)]
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    q4_linear._reset()
    assert [m for m in range(1, 34) if q4_linear.reads_q4(m)] == list(range(1, 33))
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
    x = torch.randn(limit, 576).bfloat16()
    with torch.inference_mode():
        y = lin(x, True)
        assert torch.equal(y, q4_linear.q4_linear(x, q))
        if not skinny.uses_amx():  # rows 5-8 may read bf16 (one thread): still the same values
            for m in range(1, 9):
                assert torch.equal(lin(x[:m], True), y[:m]), f"{m} rows"
        for i in range(limit):
            assert torch.equal(y[i : i + 1], lin(x[i : i + 1], True)), f"row {i}"
