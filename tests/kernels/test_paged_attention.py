"""paged_decode_attention: agreement with gather + SDPA in fp32, layouts, fallbacks."""

from __future__ import annotations

import math
import subprocess
import sys
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F

from tokenfactory.kernels import _build, native
from tokenfactory.kernels import paged_attention as pa
from tokenfactory.kernels.paged_attention import paged_decode_attention

HAS_CPU = pa._REQUIRED_CPU <= _build.cpu_flags()

needs_native = pytest.mark.skipif(
    not (HAS_CPU and native.load()),
    reason="native paged attention needs an AVX512F CPU and the native library",
)


@pytest.fixture(autouse=True)
def _fresh_state(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv(_build.DISABLE_ENV, raising=False)
    pa._reset()
    yield
    pa._reset()


def reference(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """The torch path's math (gather + masked SDPA), all in fp32."""
    d, max_blocks = block_tables.shape
    _, block_size, kv_heads, head_dim = k_cache.shape
    idx = block_tables.reshape(-1)
    keys = k_cache.float().index_select(0, idx).view(d, -1, kv_heads, head_dim).transpose(1, 2)
    vals = v_cache.float().index_select(0, idx).view(d, -1, kv_heads, head_dim).transpose(1, 2)
    mask = (torch.arange(max_blocks * block_size) < context_lens[:, None]).view(d, 1, 1, -1)
    out = F.scaled_dot_product_attention(
        q.float().unsqueeze(2), keys, vals, attn_mask=mask, scale=scale, enable_gqa=True
    )
    return out.squeeze(2)


def make_case(
    context_lens: list[int],
    heads: int,
    kv_heads: int,
    head_dim: int,
    dtype: torch.dtype,
    block_size: int = 16,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    d = len(context_lens)
    max_blocks = max(1, max(-(-n // block_size) for n in context_lens))
    num_blocks = d * max_blocks + 3
    shape = (num_blocks, block_size, kv_heads, head_dim)
    k_cache = torch.randn(shape, generator=gen).to(dtype)
    v_cache = torch.randn(shape, generator=gen).to(dtype)
    # scattered, non-contiguous block ids; padding entries point at block 0 like the engine
    perm = torch.randperm(num_blocks, generator=gen)
    tables = torch.zeros((d, max_blocks), dtype=torch.int64)
    for i, n in enumerate(context_lens):
        nb = -(-n // block_size)
        tables[i, :nb] = perm[i * max_blocks : i * max_blocks + nb]
    if d >= 2 and context_lens[0] >= block_size and context_lens[1] >= block_size:
        tables[1, 0] = tables[0, 0]  # a shared prefix block
    q = torch.randn((d, heads, head_dim), generator=gen).to(dtype)
    return q, k_cache, v_cache, tables, torch.tensor(context_lens, dtype=torch.int64)


def tol(dtype: torch.dtype) -> float:
    # bf16 output is rounded once (rel. 2^-8); fp32 differs only by summation order
    return 2e-2 if dtype is torch.bfloat16 else 2e-5


LENS = [
    [1],
    [16],
    [17, 5, 32],
    [1, 15, 16, 31, 33, 100, 250],
    [300] * 3 + [7],
    [1000, 1],
]


@needs_native
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("heads,kv_heads", [(9, 3), (4, 4), (6, 2)])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("lens", LENS, ids=lambda x: "-".join(map(str, x)))
def test_matches_reference(
    dtype: torch.dtype, heads: int, kv_heads: int, head_dim: int, lens: list[int]
) -> None:
    q, kc, vc, bt, cl = make_case(lens, heads, kv_heads, head_dim, dtype)
    scale = 1 / math.sqrt(head_dim)
    out = paged_decode_attention(q, kc, vc, bt, cl, scale)
    assert out is not None and out.dtype == dtype and out.shape == q.shape
    ref = reference(q, kc, vc, bt, cl, scale)
    torch.testing.assert_close(out.float(), ref, atol=tol(dtype), rtol=tol(dtype))


@needs_native
@pytest.mark.parametrize("head_dim", [16, 96, 256])
@pytest.mark.parametrize("block_size", [1, 8, 32])
def test_other_head_dims_and_block_sizes(head_dim: int, block_size: int) -> None:
    q, kc, vc, bt, cl = make_case([1, 9, 40, 77], 8, 2, head_dim, torch.float32, block_size)
    out = paged_decode_attention(q, kc, vc, bt, cl, 0.3)
    assert out is not None
    torch.testing.assert_close(out, reference(q, kc, vc, bt, cl, 0.3), atol=2e-5, rtol=2e-5)


@needs_native
def test_default_scale_large_logits_and_threads() -> None:
    q, kc, vc, bt, cl = make_case([5, 64, 129, 700], 9, 3, 64, torch.float32)
    q = q * 30  # large logits: exercises the running-max rescaling
    prev = torch.get_num_threads()
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            out = paged_decode_attention(q, kc, vc, bt, cl)
            ref = reference(q, kc, vc, bt, cl, 1 / 8)
            assert out is not None
            torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
    finally:
        torch.set_num_threads(prev)


@needs_native
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_strided_q_out_and_mixed_dtype(dtype: torch.dtype) -> None:
    lens = [3, 40, 16]
    _, kc, vc, bt, cl = make_case(lens, 9, 3, 64, dtype)
    # q as a view into a fused qkv projection: [D, (9 + 3 + 3) * 64], heads strided
    qkv = torch.randn(len(lens), 15 * 64).to(torch.float32 if dtype is torch.bfloat16 else dtype)
    q = qkv[:, : 9 * 64].view(len(lens), 9, 64)
    assert not q.is_contiguous() or q.stride(0) != 9 * 64
    big = torch.full((len(lens), 9, 128), 7.0, dtype=q.dtype)
    out = big[:, :, :64]
    res = paged_decode_attention(q, kc, vc, bt, cl, 0.125, out=out)
    assert res is out
    torch.testing.assert_close(
        out.float(), reference(q, kc, vc, bt, cl, 0.125), atol=tol(dtype), rtol=tol(dtype)
    )
    assert (big[:, :, 64:] == 7.0).all()  # nothing written outside the view


@needs_native
def test_engine_style_block_tables_and_zero_length() -> None:
    q, kc, vc, bt, cl = make_case([20, 1], 4, 2, 64, torch.float32)
    bt32 = bt.to(torch.int32)  # other integer dtypes are converted
    cl[1] = 0
    out = paged_decode_attention(q, kc, vc, bt32, cl, 0.125)
    assert out is not None
    assert (out[1] == 0).all()
    torch.testing.assert_close(
        out[:1], reference(q[:1], kc, vc, bt[:1], cl[:1], 0.125), atol=2e-5, rtol=2e-5
    )
    empty = paged_decode_attention(q[:0], kc, vc, bt[:0], cl[:0], 0.125)
    assert empty is not None and empty.shape == (0, 4, 64)


@needs_native
def test_invalid_input_raises() -> None:
    q, kc, vc, bt, cl = make_case([20, 5], 4, 2, 64, torch.float32)
    with pytest.raises(ValueError):
        paged_decode_attention(q, kc, vc, bt, torch.tensor([20, 10_000]), 0.1)
    bad = bt.clone()
    bad[0, 1] = kc.shape[0]
    with pytest.raises(ValueError):
        paged_decode_attention(q, kc, vc, bad, cl, 0.1)
    with pytest.raises(ValueError):
        paged_decode_attention(q[:, :3], kc, vc, bt, cl, 0.1)  # 3 heads over 2 kv heads


@needs_native
def test_unsupported_returns_none() -> None:
    q, kc, vc, bt, cl = make_case([20, 5], 4, 2, 64, torch.float32)
    assert paged_decode_attention(q.half(), kc, vc, bt, cl, 0.1) is None
    assert paged_decode_attention(q, kc.half(), vc.half(), bt, cl, 0.1) is None
    assert paged_decode_attention(q, kc, vc.bfloat16(), bt, cl, 0.1) is None
    kc_strided = torch.cat([kc, kc], dim=3)[..., :64]  # same shape, not contiguous
    assert paged_decode_attention(q, kc_strided, vc, bt, cl, 0.1) is None
    q2, kc2, vc2, bt2, cl2 = make_case([20, 5], 4, 2, 40, torch.float32)
    assert paged_decode_attention(q2, kc2, vc2, bt2, cl2, 0.1) is None  # head_dim % 16
    q3, kc3, vc3, bt3, cl3 = make_case([20, 5], 34, 2, 64, torch.float32)
    assert paged_decode_attention(q3, kc3, vc3, bt3, cl3, 0.1) is None  # group of 17
    with torch.enable_grad():
        qg = q.clone().requires_grad_()
        assert paged_decode_attention(qg, kc, vc, bt, cl, 0.1) is None


def test_disabled_by_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(_build.DISABLE_ENV, "1")
    pa._reset()
    assert not pa.available()
    q, kc, vc, bt, cl = make_case([20, 5], 4, 2, 64, torch.float32)
    assert paged_decode_attention(q, kc, vc, bt, cl, 0.1) is None


def test_build_failure_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(native, "load", lambda: False)  # what a failed build answers
    pa._reset()
    assert not pa.available()
    q, kc, vc, bt, cl = make_case([3], 4, 2, 64, torch.float32)
    assert paged_decode_attention(q, kc, vc, bt, cl, 0.1) is None


def test_non_cpu_device_returns_none() -> None:
    if not pa.available():
        pytest.skip("native kernel unavailable")
    q, kc, vc, bt, cl = make_case([3], 4, 2, 64, torch.float32)
    assert paged_decode_attention(q.to("meta"), kc, vc, bt, cl, 0.1) is None


# Run in a process of its own: one process loads one build of the library.
_NO_BF16_CHECK = """
from tokenfactory.kernels import _build
cpu = _build.cpu_flags()
_build.cpu_flags = lambda: cpu - _build.BF16_CPU - _build.AMX_CPU
import torch
from tests.kernels.test_paged_attention import make_case, reference, tol
from tokenfactory.kernels.paged_attention import paged_decode_attention
for dtype in (torch.bfloat16, torch.float32):
    q, kc, vc, bt, cl = make_case([1, 16, 33, 300], 9, 3, 64, dtype)
    out = paged_decode_attention(q, kc, vc, bt, cl, 0.125)
    assert out is not None
    ref = reference(q, kc, vc, bt, cl, 0.125)
    torch.testing.assert_close(out.float(), ref, atol=tol(dtype), rtol=tol(dtype))
print("ok")
"""


@needs_native
def test_build_without_avx512_bf16() -> None:
    # The AVX512F-only build (integer bf16 rounding, fp32 dots for bf16 q) must agree too.
    # A build of its own (cached like any other: ~10 s the first time on a machine).
    res = subprocess.run(
        [sys.executable, "-c", _NO_BF16_CHECK], capture_output=True, text=True, timeout=600
    )
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-3000:]
