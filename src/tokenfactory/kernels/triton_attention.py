"""Triton kernels for the GPU path: paged attention (decode and prefill) and the KV write.

All three read and write the paged cache in place through block tables, so a sequence's
attention touches only the blocks it owns:

- `kv_write`: this step's K and V of one layer into their cache slots, one launch for both
  (slots < 0 are skipped: padding rows of a CUDA graph batch).
- `paged_decode`: one query token per sequence; a program handles one (sequence, KV head,
  split) and all query heads of the GQA group together, so each K/V block is read once per
  group. Long contexts at small batches split the keys across programs (split-K), and a
  second small kernel merges the partial softmaxes. Nothing depends on host values: the
  context length is read on the device, so the launch can be captured in a CUDA graph.
- `paged_prefill`: causal flash attention for prompt chunks whose keys live in the cache,
  cached prefix blocks included (prefix caching and chunked prefill attend over them).

Triton is optional: it ships with CUDA builds of PyTorch, and nothing imports this module on
a machine without it. With TRITON_INTERPRET=1 set before the import, the same kernels run
on CPU tensors in Triton's interpreter (that is how the CPU tests check them).
"""

from __future__ import annotations

import os

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the installation
    triton = None
    tl = None


# Set when the kernels run in Triton's interpreter (CPU tensors), read at import like Triton.
_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


def _precision(q: torch.Tensor) -> str:
    """float32 models get exact float32 dot products (not TF32), like cuBLAS by default."""
    return "ieee" if q.dtype is torch.float32 else "tf32"


def triton_available() -> bool:
    return triton is not None


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


if triton is not None:

    @triton.jit
    def _kv_write_kernel(
        k_ptr,
        v_ptr,
        k_cache_ptr,
        v_cache_ptr,
        slot_ptr,
        stride_kt,
        stride_vt,
        KV_SIZE: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        t = tl.program_id(0)
        slot = tl.load(slot_ptr + t).to(tl.int64)
        offs = tl.arange(0, BLOCK)
        mask = (offs < KV_SIZE) & (slot >= 0)
        k = tl.load(k_ptr + t * stride_kt + offs, mask=mask)
        v = tl.load(v_ptr + t * stride_vt + offs, mask=mask)
        tl.store(k_cache_ptr + slot * KV_SIZE + offs, k, mask=mask)
        tl.store(v_cache_ptr + slot * KV_SIZE + offs, v, mask=mask)

    @triton.jit
    def _decode_kernel(
        q_ptr,
        k_cache_ptr,
        v_cache_ptr,
        bt_ptr,
        lens_ptr,
        out_ptr,
        part_ptr,
        ml_ptr,
        scale_log2,
        stride_qs,
        stride_qh,
        stride_kb,
        stride_ks,
        stride_kh,
        stride_bt,
        stride_os,
        stride_oh,
        NUM_HEADS: tl.constexpr,
        GROUP: tl.constexpr,
        GROUP_PAD: tl.constexpr,
        HEAD_DIM: tl.constexpr,
        BLOCK_SIZE: tl.constexpr,
        BLOCK_N: tl.constexpr,
        SPLITS: tl.constexpr,
        UPCAST: tl.constexpr,
        PRECISION: tl.constexpr,
    ):
        s = tl.program_id(0)
        kvh = tl.program_id(1)
        split = tl.program_id(2)
        ctx = tl.load(lens_ptr + s)
        per_split = tl.cdiv(tl.cdiv(ctx, SPLITS), BLOCK_N) * BLOCK_N
        start = split * per_split
        end = tl.minimum(start + per_split, ctx)
        num_iters = tl.cdiv(tl.maximum(end - start, 0), BLOCK_N)

        g = tl.arange(0, GROUP_PAD)
        gmask = g < GROUP
        heads = kvh * GROUP + g
        d = tl.arange(0, HEAD_DIM)
        q = tl.load(
            q_ptr + s * stride_qs + heads[:, None] * stride_qh + d[None, :],
            mask=gmask[:, None],
            other=0.0,
        )
        if UPCAST:
            q = q.to(tl.float32)
        m_i = tl.full([GROUP_PAD], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([GROUP_PAD], dtype=tl.float32)
        acc = tl.zeros([GROUP_PAD, HEAD_DIM], dtype=tl.float32)
        bt_row = bt_ptr + s.to(tl.int64) * stride_bt
        for i in range(0, num_iters):
            tok = start + i * BLOCK_N + tl.arange(0, BLOCK_N)
            tmask = tok < end
            blk = tl.load(bt_row + tok // BLOCK_SIZE, mask=tmask, other=0).to(tl.int64)
            off = blk * stride_kb + (tok % BLOCK_SIZE) * stride_ks + kvh * stride_kh
            k = tl.load(k_cache_ptr + off[:, None] + d[None, :], mask=tmask[:, None], other=0.0)
            v = tl.load(v_cache_ptr + off[:, None] + d[None, :], mask=tmask[:, None], other=0.0)
            if UPCAST:  # Triton's interpreter gets bf16 dot products wrong
                k = k.to(tl.float32)
                v = v.to(tl.float32)
            qk = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale_log2
            qk = tl.where(tmask[None, :], qk, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(qk, 1))
            alpha = tl.exp2(m_i - m_new)
            p = tl.exp2(qk - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
            m_i = m_new

        if SPLITS == 1:
            out = acc / l_i[:, None]
            tl.store(
                out_ptr + s * stride_os + heads[:, None] * stride_oh + d[None, :],
                out.to(out_ptr.dtype.element_ty),
                mask=gmask[:, None],
            )
        else:
            # Partial results: [S, H, SPLITS, D] unnormalised sums and [S, H, SPLITS, 2] (m, l).
            row = (s * NUM_HEADS + heads) * SPLITS + split
            tl.store(part_ptr + row[:, None] * HEAD_DIM + d[None, :], acc, mask=gmask[:, None])
            tl.store(ml_ptr + row * 2, m_i, mask=gmask)
            tl.store(ml_ptr + row * 2 + 1, l_i, mask=gmask)

    @triton.jit
    def _decode_reduce_kernel(
        part_ptr,
        ml_ptr,
        out_ptr,
        stride_os,
        stride_oh,
        NUM_HEADS: tl.constexpr,
        HEAD_DIM: tl.constexpr,
        SPLITS: tl.constexpr,
    ):
        s = tl.program_id(0)
        h = tl.program_id(1)
        sp = tl.arange(0, SPLITS)
        d = tl.arange(0, HEAD_DIM)
        row = (s * NUM_HEADS + h) * SPLITS + sp
        m = tl.load(ml_ptr + row * 2)
        l_ = tl.load(ml_ptr + row * 2 + 1)
        m_max = tl.max(m, 0)
        # Empty splits carry m = -inf, l = 0: weight 0.
        w = tl.where(m > float("-inf"), tl.exp2(m - m_max), 0.0)
        acc = tl.load(part_ptr + row[:, None] * HEAD_DIM + d[None, :])
        out = tl.sum(acc * w[:, None], 0) / tl.sum(l_ * w, 0)
        tl.store(out_ptr + s * stride_os + h * stride_oh + d, out.to(out_ptr.dtype.element_ty))

    @triton.jit
    def _prefill_kernel(
        q_ptr,
        k_cache_ptr,
        v_cache_ptr,
        out_ptr,
        tile_span_ptr,
        tile_m0_ptr,
        q_start_ptr,
        q_len_ptr,
        ctx_ptr,
        bt_ptr,
        scale_log2,
        stride_qt,
        stride_qh,
        stride_kb,
        stride_ks,
        stride_kh,
        stride_bt,
        stride_ot,
        stride_oh,
        GROUP: tl.constexpr,
        HEAD_DIM: tl.constexpr,
        BLOCK_SIZE: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        UPCAST: tl.constexpr,
        PRECISION: tl.constexpr,
    ):
        tile = tl.program_id(0)
        h = tl.program_id(1)
        kvh = h // GROUP
        span = tl.load(tile_span_ptr + tile)
        m0 = tl.load(tile_m0_ptr + tile)
        q_start = tl.load(q_start_ptr + span)
        q_len = tl.load(q_len_ptr + span)
        ctx = tl.load(ctx_ptr + span)
        offs_m = m0 + tl.arange(0, BLOCK_M)
        mmask = offs_m < q_len
        d = tl.arange(0, HEAD_DIM)
        rows = (q_start + offs_m).to(tl.int64)
        q = tl.load(
            q_ptr + rows[:, None] * stride_qt + h * stride_qh + d[None, :],
            mask=mmask[:, None],
            other=0.0,
        )
        if UPCAST:
            q = q.to(tl.float32)
        # Query i of the chunk sits at position ctx - q_len + i and sees keys up to it.
        qpos = ctx - q_len + offs_m
        kv_end = tl.minimum(ctx, ctx - q_len + m0 + BLOCK_M)
        m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
        acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
        bt_row = bt_ptr + span.to(tl.int64) * stride_bt
        for i in range(0, tl.cdiv(kv_end, BLOCK_N)):
            tok = i * BLOCK_N + tl.arange(0, BLOCK_N)
            tmask = tok < kv_end
            blk = tl.load(bt_row + tok // BLOCK_SIZE, mask=tmask, other=0).to(tl.int64)
            off = blk * stride_kb + (tok % BLOCK_SIZE) * stride_ks + kvh * stride_kh
            k = tl.load(k_cache_ptr + off[:, None] + d[None, :], mask=tmask[:, None], other=0.0)
            v = tl.load(v_cache_ptr + off[:, None] + d[None, :], mask=tmask[:, None], other=0.0)
            if UPCAST:  # Triton's interpreter gets bf16 dot products wrong
                k = k.to(tl.float32)
                v = v.to(tl.float32)
            qk = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale_log2
            visible = tmask[None, :] & (tok[None, :] <= qpos[:, None])
            qk = tl.where(visible, qk, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(qk, 1))
            alpha = tl.exp2(m_i - m_new)
            p = tl.exp2(qk - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
            m_i = m_new
        out = acc / l_i[:, None]
        tl.store(
            out_ptr + rows[:, None] * stride_ot + h * stride_oh + d[None, :],
            out.to(out_ptr.dtype.element_ty),
            mask=mmask[:, None],
        )


_LOG2E = 1.4426950408889634


def kv_write(
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """k, v: [T, kv_heads, head_dim] (each row contiguous) into cache slots; slot < 0 skips."""
    t, kv_heads, head_dim = k.shape
    if t == 0:
        return
    size = kv_heads * head_dim
    assert k.stride(2) == 1 and k.stride(1) == head_dim and v.stride(2) == 1
    assert v.stride(1) == head_dim and k_cache.is_contiguous() and v_cache.is_contiguous()
    _kv_write_kernel[(t,)](
        k, v, k_cache, v_cache, slot_mapping, k.stride(0), v.stride(0),
        KV_SIZE=size, BLOCK=_next_pow2(size), num_warps=4 if size >= 1024 else 1,
    )  # fmt: skip


def decode_splits(num_seqs: int, num_kv_heads: int, num_sms: int, max_splits: int = 16) -> int:
    """Key splits per sequence so that a small batch still fills the GPU (a power of two)."""
    want = max(1, (2 * num_sms) // max(1, num_seqs * num_kv_heads))
    return min(max_splits, 1 << (want.bit_length() - 1))


def paged_decode(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float,
    splits: int = 1,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """One query token per sequence: q [S, heads, d] -> [S, heads, d], keys from the cache.

    block_tables [S, >= blocks needed] and context_lens [S] live on q's device; every
    sequence needs context_len >= 1.
    """
    s, heads, head_dim = q.shape
    _, block_size, kv_heads, _ = k_cache.shape
    group = heads // kv_heads
    out = torch.empty_like(q) if out is None else out
    if s == 0:
        return out
    assert q.stride(2) == 1 and k_cache.stride(3) == 1 and block_tables.stride(1) == 1
    splits = _next_pow2(splits)
    if splits > 1:
        part = torch.empty((s, heads, splits, head_dim), dtype=torch.float32, device=q.device)
        ml = torch.empty((s, heads, splits, 2), dtype=torch.float32, device=q.device)
    else:
        part = ml = out  # unused
    _decode_kernel[(s, kv_heads, splits)](
        q, k_cache, v_cache, block_tables, context_lens, out, part, ml,
        scale * _LOG2E,
        q.stride(0), q.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        block_tables.stride(0),
        out.stride(0), out.stride(1),
        NUM_HEADS=heads, GROUP=group, GROUP_PAD=max(16, _next_pow2(group)),
        HEAD_DIM=head_dim, BLOCK_SIZE=block_size, BLOCK_N=64, SPLITS=splits,
        UPCAST=_INTERPRET, PRECISION=_precision(q),
        num_warps=4,
    )  # fmt: skip
    if splits > 1:
        _decode_reduce_kernel[(s, heads)](
            part, ml, out, out.stride(0), out.stride(1),
            NUM_HEADS=heads, HEAD_DIM=head_dim, SPLITS=splits, num_warps=4,
        )  # fmt: skip
    return out


PREFILL_BLOCK_M = 64


def prefill_tiles(q_lens: list[int], block_m: int = PREFILL_BLOCK_M) -> tuple[list[int], list[int]]:
    """Work list of the prefill kernel: (span index, first query row) of every query tile."""
    spans: list[int] = []
    starts: list[int] = []
    for i, n in enumerate(q_lens):
        for m0 in range(0, n, block_m):
            spans.append(i)
            starts.append(m0)
    return spans, starts


def paged_prefill(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    out: torch.Tensor,
    tile_span: torch.Tensor,
    tile_m0: torch.Tensor,
    q_start: torch.Tensor,
    q_len: torch.Tensor,
    context_len: torch.Tensor,
    block_tables: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """Causal attention for prefill chunks (rows q_start..q_start+q_len of q and out), keys
    and values read from the cache through each chunk's block table (its K/V already written).
    """
    num_tiles = tile_span.shape[0]
    _, heads, head_dim = q.shape
    _, block_size, kv_heads, _ = k_cache.shape
    if num_tiles == 0:
        return out
    assert q.stride(2) == 1 and k_cache.stride(3) == 1 and block_tables.stride(1) == 1
    _prefill_kernel[(num_tiles, heads)](
        q, k_cache, v_cache, out, tile_span, tile_m0, q_start, q_len, context_len, block_tables,
        scale * _LOG2E,
        q.stride(0), q.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        block_tables.stride(0),
        out.stride(0), out.stride(1),
        GROUP=heads // kv_heads, HEAD_DIM=head_dim, BLOCK_SIZE=block_size,
        BLOCK_M=PREFILL_BLOCK_M, BLOCK_N=64, UPCAST=_INTERPRET, PRECISION=_precision(q),
        num_warps=4, num_stages=2,
    )  # fmt: skip
    return out
