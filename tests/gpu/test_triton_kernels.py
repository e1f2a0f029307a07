"""Triton kernels against PyTorch references (on the GPU, or interpreted on CPU)."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from tests.gpu.conftest import needs_triton

pytestmark = needs_triton


def _cache(num_blocks, block_size, kv_heads, head_dim, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    shape = (num_blocks, block_size, kv_heads, head_dim)
    k = torch.randn(shape, generator=g).to(dtype).to(device)
    v = torch.randn(shape, generator=g).to(dtype).to(device)
    return k, v


def _tables(lens, block_size, num_blocks, seed=0):
    """Random disjoint block tables (padded with -1 beyond each sequence's blocks)."""
    rng = random.Random(seed)
    ids = list(range(num_blocks))
    rng.shuffle(ids)
    width = max(-(-n // block_size) for n in lens)
    rows = []
    for n in lens:
        nb = -(-n // block_size)
        row = [ids.pop() for _ in range(nb)]
        rows.append(row + [-1] * (width - nb))
    return rows


def _reference(q, k_cache, v_cache, table, ctx, q_len, scale):
    """q [q_len, H, D] at positions ctx-q_len.. attending causally over the first ctx slots."""
    bs = k_cache.shape[1]
    blocks = torch.tensor(table[: -(-ctx // bs)], dtype=torch.long)
    keys = k_cache.cpu().float()[blocks].flatten(0, 1)[:ctx]
    values = v_cache.cpu().float()[blocks].flatten(0, 1)[:ctx]
    qpos = torch.arange(q_len).unsqueeze(1) + ctx - q_len
    mask = torch.arange(ctx).unsqueeze(0) <= qpos
    out = F.scaled_dot_product_attention(
        q.cpu().float().transpose(0, 1),
        keys.transpose(0, 1),
        values.transpose(0, 1),
        attn_mask=mask,
        scale=scale,
        enable_gqa=True,
    )
    return out.transpose(0, 1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("splits", [1, 4])
@pytest.mark.parametrize("heads,kv_heads,head_dim", [(4, 2, 32), (9, 3, 64)])
def test_paged_decode_matches_reference(device, dtype, splits, heads, kv_heads, head_dim):
    from tokenfactory.kernels.triton_attention import paged_decode

    bs, nblocks = 16, 64
    lens = [1, 17, 100, 230, 64]
    k_cache, v_cache = _cache(nblocks, bs, kv_heads, head_dim, dtype, device)
    tables = _tables(lens, bs, nblocks)
    bt = torch.tensor([[max(b, 0) for b in r] for r in tables], dtype=torch.int32, device=device)
    cl = torch.tensor(lens, dtype=torch.int32, device=device)
    q = torch.randn(len(lens), heads, head_dim).to(dtype).to(device)
    scale = head_dim**-0.5
    out = paged_decode(q, k_cache, v_cache, bt, cl, scale, splits=splits)
    tol = 1e-4 if dtype is torch.float32 else 2e-2
    for i, n in enumerate(lens):
        ref = _reference(q[i : i + 1], k_cache, v_cache, tables[i], n, 1, scale)
        torch.testing.assert_close(out[i : i + 1].cpu().float(), ref, atol=tol, rtol=tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_paged_prefill_with_cached_prefix(device, dtype):
    """Chunks with cached context before them (prefix cache, chunked prefill) and without."""
    from tokenfactory.kernels.triton_attention import paged_prefill, prefill_tiles

    bs, nblocks, heads, kv_heads, head_dim = 16, 96, 4, 2, 32
    spans = [(70, 70), (5, 40), (100, 180), (1, 33)]  # (q_len, context_len)
    k_cache, v_cache = _cache(nblocks, bs, kv_heads, head_dim, dtype, device, seed=1)
    tables = _tables([c for _, c in spans], bs, nblocks, seed=1)
    total = sum(n for n, _ in spans)
    q = torch.randn(total, heads, head_dim).to(dtype).to(device)
    out = torch.zeros_like(q)
    q_lens = [n for n, _ in spans]
    starts = [sum(q_lens[:i]) for i in range(len(spans))]
    tile_span, tile_m0 = prefill_tiles(q_lens)

    def t(x):
        return torch.tensor(x, dtype=torch.int32, device=device)

    bt = t([[max(b, 0) for b in r] for r in tables])
    paged_prefill(
        q, k_cache, v_cache, out, t(tile_span), t(tile_m0), t(starts), t(q_lens),
        t([c for _, c in spans]), bt, head_dim**-0.5,
    )  # fmt: skip
    tol = 1e-4 if dtype is torch.float32 else 2e-2
    for (n, ctx), s, table in zip(spans, starts, tables, strict=True):
        ref = _reference(q[s : s + n], k_cache, v_cache, table, ctx, n, head_dim**-0.5)
        torch.testing.assert_close(out[s : s + n].cpu().float(), ref, atol=tol, rtol=tol)


def test_kv_write_skips_negative_slots(device):
    from tokenfactory.kernels.triton_attention import kv_write

    k_cache = torch.zeros(4, 16, 2, 32, device=device)
    v_cache = torch.zeros_like(k_cache)
    qk = torch.randn(3, 6, 32, device=device)  # k is a strided view, as in the model
    k = qk[:, 4:]
    v = torch.randn(3, 2, 32, device=device)
    slots = torch.tensor([5, -1, 63], device=device)
    kv_write(k, v, k_cache, v_cache, slots)
    kf, vf = k_cache.view(-1, 2, 32), v_cache.view(-1, 2, 32)
    torch.testing.assert_close(kf[5], k[0])
    torch.testing.assert_close(vf[63], v[2])
    assert kf.abs().sum(dim=(1, 2)).nonzero().flatten().tolist() == [5, 63]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_small_ops(device, dtype):
    from tokenfactory.kernels import triton_fused as tf

    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 96, generator=g).to(dtype).to(device)
    res = torch.randn(5, 96, generator=g).to(dtype).to(device)
    w = torch.rand(96, generator=g).to(dtype).to(device)
    tol = 1e-5 if dtype is torch.float32 else 2e-2
    ref_res = x + res
    ref = F.rms_norm(ref_res, (96,), w, 1e-5)
    out, new_res = tf.add_rms_norm(x, res.clone(), w, 1e-5)
    torch.testing.assert_close(new_res, ref_res, atol=tol, rtol=tol)
    torch.testing.assert_close(out, ref, atol=tol, rtol=tol)
    out, new_res = tf.add_rms_norm(x, None, w, 1e-5)
    torch.testing.assert_close(new_res, x)
    torch.testing.assert_close(out, F.rms_norm(x, (96,), w, 1e-5), atol=tol, rtol=tol)

    gu = torch.randn(3, 2 * 80, generator=g).to(dtype).to(device)
    torch.testing.assert_close(tf.silu_mul(gu), F.silu(gu[:, :80]) * gu[:, 80:], atol=tol, rtol=tol)


def test_rope_matches_apply_rotary(device):
    from tokenfactory.kernels import triton_fused as tf
    from tokenfactory.models.config import ModelConfig
    from tokenfactory.models.rope import RotaryEmbedding, apply_rotary

    cfg = ModelConfig("llama", 100, 64 * 3, 64, 1, 3, 1, max_position_embeddings=64)
    rot = RotaryEmbedding(cfg, 64).to(device)
    pos = torch.tensor([0, 5, 63, 17], device=device)
    x = torch.randn(4, 4, 64, device=device)
    cos, sin = rot.cos_sin(pos, x.dtype)
    ref = apply_rotary(x, cos, sin)
    got = tf.rope_(x.clone(), pos, rot.cos, rot.sin)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
