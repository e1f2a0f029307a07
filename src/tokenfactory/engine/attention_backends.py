"""Attention backends: each writes a layer's K/V into the paged cache and attends, over the
same `AttentionMetadata`.

- `TorchAttention`: portable PyTorch ops, any device: the reference, and the GPU fallback
  without Triton.
- `CpuAttention`: the same, with decodes read in place by the native CPU kernel
  (`kernels.paged_attention`) wherever it runs.
- `TritonAttention`: the Triton kernels (`kernels.triton_attention`), for CUDA.

Another kernel library (FlashInfer, flash-attn) is one more subclass: `host_arrays` for what
it plans on the host (e.g. a work list), `forward` for the write and the attention, and an
entry in `engine.backend_selection`.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from tokenfactory.engine.attention import AttentionMetadata, KVCache, Span
from tokenfactory.engine.step_inputs import StepInputs
from tokenfactory.kernels.paged_attention import paged_decode_attention


class AttentionBackend:
    """Writes this step's K/V for `layer` and attends; q: [T, heads, d], k/v: [T, kv_heads,
    d] -> [T, heads, d]. Decodes are rows 0..num_decodes-1; `meta.spans` are the rest."""

    name: ClassVar[str]

    def __init__(self, cache: KVCache, scale: float | None):
        self.cache = cache
        self.scale = scale  # None: 1 / sqrt(head_dim), as SDPA and the CPU kernel take it

    def host_arrays(self, inputs: StepInputs) -> dict[str, np.ndarray]:
        """Extra int64 arrays this backend needs on the device (shipped with the step's)."""
        return {}

    def decode_splits(self, batch: int) -> int:
        return 1

    def forward(
        self,
        layer: int,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        meta: AttentionMetadata,
    ) -> torch.Tensor:
        raise NotImplementedError


class TorchAttention(AttentionBackend):
    name = "torch"

    def forward(
        self,
        layer: int,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        meta: AttentionMetadata,
    ) -> torch.Tensor:
        k_cache, v_cache = self.cache.k[layer], self.cache.v[layer]
        kv_heads, head_dim = k_cache.shape[2], k_cache.shape[3]
        v = v.contiguous()
        k_cache.view(-1, kv_heads, head_dim).index_copy_(0, meta.slot_mapping, k)
        v_cache.view(-1, kv_heads, head_dim).index_copy_(0, meta.slot_mapping, v)
        out = torch.empty_like(q)
        d = meta.num_decodes
        if d:
            self._decode(q[:d], k_cache, v_cache, meta, out[:d])
        for span in meta.spans:
            rows = slice(span.q_start, span.q_start + span.q_len)
            out[rows] = self._span(span, q[rows], k[rows], v[rows], k_cache, v_cache, meta)
        return out

    def _decode(
        self,
        q: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        meta: AttentionMetadata,
        out: torch.Tensor,
    ) -> None:
        """One query per sequence: gather its blocks, masked SDPA over them."""
        bt, lens = meta.decode_block_tables, meta.decode_context_lens
        assert bt is not None and lens is not None
        d, width = bt.shape
        bs, kv_heads, head_dim = k_cache.shape[1:]
        mask = meta.extra.get("decode_mask")
        if mask is None:  # once per step, not per layer
            mask = torch.arange(width * bs, device=q.device).unsqueeze(0) < lens.unsqueeze(1)
            mask = meta.extra["decode_mask"] = mask.view(d, 1, 1, width * bs)
        idx = bt.reshape(-1)
        keys = k_cache.index_select(0, idx).view(d, -1, kv_heads, head_dim).transpose(1, 2)
        values = v_cache.index_select(0, idx).view(d, -1, kv_heads, head_dim).transpose(1, 2)
        att = F.scaled_dot_product_attention(
            q.unsqueeze(2), keys, values, attn_mask=mask, scale=self.scale, enable_gqa=True
        )
        out.copy_(att.squeeze(2))

    def _span(
        self,
        span: Span,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        meta: AttentionMetadata,
    ) -> torch.Tensor:
        """Causal attention of a span's queries over its context (cached blocks included)."""
        n, ctx = span.q_len, span.context_len
        if ctx == n:
            # Nothing cached before this span: attend over its own K/V, no gather needed.
            return _sdpa(q, k, v, None, self.scale)
        assert meta.block_tables is not None
        kv_heads, head_dim = k_cache.shape[2], k_cache.shape[3]
        table = meta.block_tables[span.index, : -(-ctx // k_cache.shape[1])]
        keys = k_cache.index_select(0, table).view(-1, kv_heads, head_dim)[:ctx]
        values = v_cache.index_select(0, table).view(-1, kv_heads, head_dim)[:ctx]
        # Query i sits at position (ctx - n + i) and sees keys up to and including it.
        qpos = torch.arange(n, device=q.device).unsqueeze(1) + (ctx - n)
        mask = torch.arange(ctx, device=q.device).unsqueeze(0) <= qpos
        return _sdpa(q, keys, values, mask, self.scale)


class CpuAttention(TorchAttention):
    """Decodes through the native CPU kernel: it reads each sequence's blocks in place (no
    gather copy); where it cannot run (no AVX512, unsupported shape) the torch path does."""

    name = "cpu"

    def _decode(
        self,
        q: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        meta: AttentionMetadata,
        out: torch.Tensor,
    ) -> None:
        tables, lens = meta.decode_block_tables, meta.decode_context_lens
        assert tables is not None and lens is not None  # set whenever a step has decodes
        got = paged_decode_attention(
            q, k_cache, v_cache, tables, lens, self.scale,
            out=out,
        )  # fmt: skip
        if got is None:
            super()._decode(q, k_cache, v_cache, meta, out)


class TritonAttention(AttentionBackend):
    """Triton kernels: one KV write for K and V, split-K decode, causal flash attention for
    the other spans over their cached blocks. No host values are read, so decode launches
    can be captured in CUDA graphs."""

    name = "triton"

    def __init__(self, cache: KVCache, scale: float | None, num_sms: int = 0):
        super().__init__(cache, scale)
        self.num_sms = num_sms

    def host_arrays(self, inputs: StepInputs) -> dict[str, np.ndarray]:
        """The prefill kernel's work list: (span, first query row) of every query tile,
        spans counted from the first one after the decodes."""
        from tokenfactory.kernels.triton_attention import prefill_tiles

        if inputs.is_decode_only:
            return {}
        spans, m0 = prefill_tiles(inputs.q_len[inputs.num_decodes :].tolist())
        return {
            "tile_span": np.array(spans, dtype=np.int64),
            "tile_m0": np.array(m0, dtype=np.int64),
        }

    def decode_splits(self, batch: int) -> int:
        if not self.num_sms:
            return 1
        from tokenfactory.kernels.triton_attention import decode_splits

        return decode_splits(batch, self.cache.k[0].shape[2], self.num_sms)

    def forward(
        self,
        layer: int,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        meta: AttentionMetadata,
    ) -> torch.Tensor:
        from tokenfactory.kernels import triton_attention as ta

        assert self.scale is not None
        k_cache, v_cache = self.cache.k[layer], self.cache.v[layer]
        out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
        ta.kv_write(k, v, k_cache, v_cache, meta.slot_mapping)
        d = meta.num_decodes
        if d:
            assert meta.decode_block_tables is not None and meta.decode_context_lens is not None
            ta.paged_decode(
                q[:d], k_cache, v_cache, meta.decode_block_tables, meta.decode_context_lens,
                self.scale, splits=meta.decode_splits, out=out[:d],
            )  # fmt: skip
        if meta.spans:
            assert meta.block_tables is not None and meta.q_start is not None
            assert meta.q_len is not None and meta.context_lens is not None
            ta.paged_prefill(
                q, k_cache, v_cache, out, meta.extra["tile_span"], meta.extra["tile_m0"],
                meta.q_start[d:], meta.q_len[d:], meta.context_lens[d:], meta.block_tables[d:],
                self.scale,
            )  # fmt: skip
        return out


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
