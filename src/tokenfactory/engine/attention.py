"""Paged attention: the KV cache tensors, per-step metadata, and the portable torch backend.

A step's tokens arrive flat: first one token per decoding sequence, then each prefill chunk.
`AttentionMetadata` says where each token's K/V goes (slot = block * block_size + offset) and
which blocks each sequence may read. `TorchPagedAttention` implements the model's `Attention`
call with plain PyTorch ops, so it runs on any device; a faster backend (Triton, FlexAttention)
only has to implement the same call over the same metadata.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from tokenfactory.kernels.paged_attention import paged_decode_attention
from tokenfactory.models.config import ModelConfig


@dataclass
class KVCache:
    """One K and one V tensor per layer, each [num_blocks + 1, block_size, kv_heads, head_dim].

    Blocks 0..num_blocks-1 belong to the block manager. The one extra block at index
    `pad_block` is never handed out: padding rows of a bucketed (CUDA graph) decode batch
    write their K/V there and read it back, so they cannot touch a real sequence's cache.
    """

    k: list[torch.Tensor]
    v: list[torch.Tensor]
    num_blocks: int
    block_size: int

    @property
    def pad_block(self) -> int:
        return self.num_blocks

    @property
    def pad_slot(self) -> int:
        return self.num_blocks * self.block_size

    @classmethod
    def allocate(
        cls,
        config: ModelConfig,
        num_blocks: int,
        block_size: int,
        dtype: torch.dtype,
        device: torch.device | str,
    ) -> KVCache:
        assert config.head_dim is not None
        shape = (num_blocks + 1, block_size, config.num_key_value_heads, config.head_dim)
        # Zeroed, not empty: padded reads of never-written slots must be finite (they are
        # masked out, but 0 * NaN would still poison the output).
        k = [
            torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.num_hidden_layers)
        ]
        v = [
            torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.num_hidden_layers)
        ]
        return cls(k=k, v=v, num_blocks=num_blocks, block_size=block_size)

    @staticmethod
    def bytes_per_block(config: ModelConfig, block_size: int, dtype: torch.dtype) -> int:
        assert config.head_dim is not None
        elem = torch.empty(0, dtype=dtype).element_size()
        per_layer = 2 * block_size * config.num_key_value_heads * config.head_dim * elem
        return per_layer * config.num_hidden_layers


@dataclass
class PrefillSpan:
    """One prefill chunk: tokens [q_start, q_start + q_len) of the flat batch."""

    q_start: int
    q_len: int
    context_len: int  # tokens this chunk attends to, itself included
    block_table: torch.Tensor  # [ceil(context_len / block_size)] block ids


@dataclass
class AttentionMetadata:
    slot_mapping: torch.Tensor  # [T] cache slot of each token
    num_decodes: int  # the first num_decodes tokens are single-token decodes
    decode_block_tables: torch.Tensor | None  # [D, max_blocks], padded with block 0
    decode_context_lens: torch.Tensor | None  # [D]
    decode_mask: torch.Tensor | None  # [D, 1, 1, max_blocks * block_size], True = attend
    prefills: list[PrefillSpan]


class TorchPagedAttention:
    """The model's `Attention` over a paged cache, in plain PyTorch ops (CPU or GPU)."""

    def __init__(self, cache: KVCache, meta: AttentionMetadata, scale: float | None = None):
        self.cache = cache
        self.meta = meta
        self.scale = scale

    def __call__(
        self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> torch.Tensor:
        meta, cache = self.meta, self.cache
        k_cache, v_cache = cache.k[layer], cache.v[layer]
        kv_heads, head_dim = k_cache.shape[2], k_cache.shape[3]
        k_flat = k_cache.view(-1, kv_heads, head_dim)
        v_flat = v_cache.view(-1, kv_heads, head_dim)
        k_flat.index_copy_(0, meta.slot_mapping, k)
        v_flat.index_copy_(0, meta.slot_mapping, v)

        out = torch.empty_like(q)
        d = meta.num_decodes
        if d:
            out[:d] = self._decode(q[:d], k_cache, v_cache)
        for span in meta.prefills:
            rows = slice(span.q_start, span.q_start + span.q_len)
            out[rows] = self._prefill(span, q[rows], k[rows], v[rows], k_cache, v_cache)
        return out

    def _decode(
        self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor
    ) -> torch.Tensor:
        meta = self.meta
        assert meta.decode_block_tables is not None and meta.decode_mask is not None
        assert meta.decode_context_lens is not None
        if q.is_cpu:
            # Native kernel: reads each sequence's blocks in place, no gather copy. None means
            # it cannot run here (no AVX512, unsupported shape); use the portable path then.
            out = paged_decode_attention(
                q, k_cache, v_cache, meta.decode_block_tables, meta.decode_context_lens,
                self.scale,
            )  # fmt: skip
            if out is not None:
                return out
        d, max_blocks = meta.decode_block_tables.shape
        kv_heads, head_dim = k_cache.shape[2], k_cache.shape[3]
        # Gather each sequence's blocks: [D, max_blocks * block_size, kv_heads, head_dim].
        idx = meta.decode_block_tables.reshape(-1)
        keys = k_cache.index_select(0, idx).view(d, -1, kv_heads, head_dim).transpose(1, 2)
        values = v_cache.index_select(0, idx).view(d, -1, kv_heads, head_dim).transpose(1, 2)
        out = F.scaled_dot_product_attention(
            q.unsqueeze(2),  # [D, heads, 1, head_dim]
            keys,
            values,
            attn_mask=meta.decode_mask,
            scale=self.scale,
            enable_gqa=True,
        )
        return out.squeeze(2)

    def _prefill(
        self,
        span: PrefillSpan,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
    ) -> torch.Tensor:
        if span.context_len == span.q_len:
            # Nothing cached before this chunk: attend over its own K/V, no gather needed.
            return _sdpa(q, k, v, None, self.scale)
        kv_heads, head_dim = k_cache.shape[2], k_cache.shape[3]
        n = span.context_len
        keys = k_cache.index_select(0, span.block_table).view(-1, kv_heads, head_dim)[:n]
        values = v_cache.index_select(0, span.block_table).view(-1, kv_heads, head_dim)[:n]
        # Query i sits at position (n - q_len + i) and sees keys up to and including it.
        offset = n - span.q_len
        qpos = torch.arange(span.q_len, device=q.device).unsqueeze(1) + offset
        kpos = torch.arange(n, device=q.device).unsqueeze(0)
        mask = kpos <= qpos
        return _sdpa(q, keys, values, mask, self.scale)


def _sdpa(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    scale: float | None,
) -> torch.Tensor:
    """Attention for one sequence: q [T, heads, d], k/v [S, kv_heads, d] -> [T, heads, d].

    Shaped for SDPA's fused (flash) CPU kernel: 4-D inputs and K/V repeated per query group,
    since 3-D inputs or `enable_gqa` send it to the much slower unfused math path.
    """
    dtype = q.dtype
    if dtype is not torch.float32 and q.is_cpu:
        # On CPU, prompts attend in float32 (the decode kernel also accumulates in float32),
        # so a prompt's first token does not hinge on bf16 rounding inside the softmax.
        q, k, v = q.float(), k.float(), v.float()
    group = q.shape[1] // k.shape[1]
    if group > 1:
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    out = F.scaled_dot_product_attention(
        q.transpose(0, 1).unsqueeze(0),
        k.transpose(0, 1).unsqueeze(0),
        v.transpose(0, 1).unsqueeze(0),
        attn_mask=mask,
        is_causal=mask is None,
        scale=scale,
    )
    return out.squeeze(0).transpose(0, 1).to(dtype)
