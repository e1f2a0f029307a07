"""The GPU fast path of the model runner: packed step metadata, paged attention backends and
bucketed decode (CUDA graphs where available).

A step's metadata is built on the host as one int64 array (token ids, positions, cache slots,
decode block tables and context lengths, prefill spans and their tile list) and reaches the
device in one copy from pinned memory. Attention reads the paged cache in place: the Triton
kernels of `kernels.triton_attention` on GPUs, or `torch` ops with the same semantics (the
reference the tests compare against, and the fallback without Triton).

Decode-only steps go through `cuda_graphs.DecodeGraphRunner` (static buffers, batch padded
to a bucket, a captured graph replayed); prefill and mixed steps run eagerly. The only host
synchronisation of a step is the sampler reading the sampled tokens.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from tokenfactory.engine.attention import KVCache, _sdpa
from tokenfactory.engine.config import EngineConfig
from tokenfactory.engine.scheduler import SchedulerOutput
from tokenfactory.models.llama import LlamaForCausalLM

log = logging.getLogger(__name__)


@dataclass
class HostBatch:
    """One step's inputs on the host, in the flat token order the model sees."""

    ids: list[int]
    positions: list[int]
    slots: list[int]
    sample_rows: list[int]
    num_decodes: int
    decode_tables: list[list[int]]  # per decode: the blocks its context occupies
    decode_lens: list[int]  # context length including the new token
    prefill_q_start: list[int]
    prefill_q_len: list[int]
    prefill_ctx: list[int]
    prefill_tables: list[list[int]]

    @property
    def is_decode_only(self) -> bool:
        return not self.prefill_q_len


def build_host_batch(step: SchedulerOutput, block_size: int) -> HostBatch:
    """The same flattening as `ModelRunner._prepare`, into plain lists."""
    bs = block_size
    ids: list[int] = []
    pos: list[int] = []
    slots: list[int] = []
    sample_rows: list[int] = []
    dec_tables: list[list[int]] = []
    dec_lens: list[int] = []
    pq_start: list[int] = []
    pq_len: list[int] = []
    p_ctx: list[int] = []
    p_tables: list[list[int]] = []
    for chunk in step.chunks:
        seq, start, n = chunk.seq, chunk.start, chunk.num_tokens
        table = seq.block_table
        q_start = len(ids)
        if n == 1 and start > 0 and not pq_len:
            dec_tables.append(table[: (start + bs) // bs])
            dec_lens.append(start + 1)
            ids.append(seq.token_at(start))
            pos.append(start)
            slots.append(table[start // bs] * bs + start % bs)
        else:
            end = start + n
            pq_start.append(q_start)
            pq_len.append(n)
            p_ctx.append(end)
            p_tables.append(table[: (end + bs - 1) // bs])
            for p in range(start, end):
                ids.append(seq.token_at(p))
                pos.append(p)
                slots.append(table[p // bs] * bs + p % bs)
        if chunk.samples:
            sample_rows.append(len(ids) - 1)
    return HostBatch(
        ids, pos, slots, sample_rows, len(dec_lens), dec_tables, dec_lens,
        pq_start, pq_len, p_ctx, p_tables,
    )  # fmt: skip


def _table_array(tables: list[list[int]]) -> np.ndarray:
    width = max((len(t) for t in tables), default=0)
    out = np.zeros((len(tables), max(width, 1)), dtype=np.int64)
    for i, t in enumerate(tables):
        out[i, : len(t)] = t
    return out


@dataclass
class FastMetadata:
    """Device-side metadata of one step (views into one packed int64 tensor)."""

    slot_mapping: torch.Tensor  # [T]
    num_decodes: int
    decode_block_tables: torch.Tensor | None  # [D, W]
    decode_context_lens: torch.Tensor | None  # [D]
    decode_splits: int = 1
    # Prefill chunks (rows num_decodes..T of the flat batch).
    prefill_q_start: torch.Tensor | None = None  # [P] absolute row of each chunk's first token
    prefill_q_len: torch.Tensor | None = None
    prefill_ctx: torch.Tensor | None = None
    prefill_block_tables: torch.Tensor | None = None  # [P, Wp]
    tile_span: torch.Tensor | None = None  # Triton prefill work list
    tile_m0: torch.Tensor | None = None
    host: HostBatch | None = None  # for the torch backend's per-chunk loop


class PackedStep:
    """Packs a HostBatch into one int64 array and ships it to the device in one copy."""

    def __init__(self, hb: HostBatch, device: torch.device, with_tiles: bool):
        parts: list[tuple[str, np.ndarray]] = [
            ("ids", np.asarray(hb.ids, dtype=np.int64)),
            ("positions", np.asarray(hb.positions, dtype=np.int64)),
            ("slots", np.asarray(hb.slots, dtype=np.int64)),
            ("sample_rows", np.asarray(hb.sample_rows, dtype=np.int64)),
        ]
        if hb.num_decodes:
            parts.append(("dec_lens", np.asarray(hb.decode_lens, dtype=np.int64)))
            parts.append(("dec_bt", _table_array(hb.decode_tables)))
        if hb.prefill_q_len:
            parts += [
                ("pq_start", np.asarray(hb.prefill_q_start, dtype=np.int64)),
                ("pq_len", np.asarray(hb.prefill_q_len, dtype=np.int64)),
                ("p_ctx", np.asarray(hb.prefill_ctx, dtype=np.int64)),
                ("p_bt", _table_array(hb.prefill_tables)),
            ]
            if with_tiles:
                from tokenfactory.kernels.triton_attention import prefill_tiles

                spans, m0 = prefill_tiles(hb.prefill_q_len)
                parts += [
                    ("tile_span", np.asarray(spans, dtype=np.int64)),
                    ("tile_m0", np.asarray(m0, dtype=np.int64)),
                ]
        flat = np.concatenate([a.reshape(-1) for _, a in parts])
        host = torch.from_numpy(flat)
        if device.type == "cuda":
            dev = host.pin_memory().to(device, non_blocking=True)
        else:
            dev = host
        self.views: dict[str, torch.Tensor] = {}
        offset = 0
        for name, a in parts:
            self.views[name] = dev[offset : offset + a.size].view(a.shape)
            offset += a.size

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.views[name]

    def get(self, name: str) -> torch.Tensor | None:
        return self.views.get(name)


class FastPagedAttention:
    """The model's `Attention` over the paged cache: Triton kernels or equivalent torch ops."""

    def __init__(self, cache: KVCache, meta: FastMetadata, scale: float, backend: str):
        self.cache = cache
        self.meta = meta
        self.scale = scale
        self.backend = backend

    def __call__(
        self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> torch.Tensor:
        meta = self.meta
        k_cache, v_cache = self.cache.k[layer], self.cache.v[layer]
        out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
        d = meta.num_decodes
        if self.backend == "triton":
            from tokenfactory.kernels import triton_attention as ta

            ta.kv_write(k, v, k_cache, v_cache, meta.slot_mapping)
            if d:
                assert meta.decode_block_tables is not None
                assert meta.decode_context_lens is not None
                ta.paged_decode(
                    q[:d], k_cache, v_cache, meta.decode_block_tables, meta.decode_context_lens,
                    self.scale, splits=meta.decode_splits, out=out[:d],
                )  # fmt: skip
            if meta.tile_span is not None:
                ta.paged_prefill(
                    q, k_cache, v_cache, out, meta.tile_span, meta.tile_m0, meta.prefill_q_start,
                    meta.prefill_q_len, meta.prefill_ctx, meta.prefill_block_tables, self.scale,
                )  # fmt: skip
            return out
        kv_heads, head_dim = k_cache.shape[2], k_cache.shape[3]
        k_cache.view(-1, kv_heads, head_dim).index_copy_(0, meta.slot_mapping, k)
        v_cache.view(-1, kv_heads, head_dim).index_copy_(0, meta.slot_mapping, v)
        if d:
            out[:d] = self._torch_decode(q[:d], k_cache, v_cache)
        hb = meta.host
        if hb is not None and hb.prefill_q_len:
            assert meta.prefill_block_tables is not None
            for i, (s, n, ctx) in enumerate(
                zip(hb.prefill_q_start, hb.prefill_q_len, hb.prefill_ctx, strict=True)
            ):
                nb = -(-ctx // k_cache.shape[1])
                table = meta.prefill_block_tables[i, :nb]
                keys = k_cache.index_select(0, table).view(-1, kv_heads, head_dim)[:ctx]
                values = v_cache.index_select(0, table).view(-1, kv_heads, head_dim)[:ctx]
                qpos = torch.arange(n, device=q.device).unsqueeze(1) + (ctx - n)
                mask = torch.arange(ctx, device=q.device).unsqueeze(0) <= qpos
                out[s : s + n] = _sdpa(q[s : s + n], keys, values, mask, self.scale)
        return out

    def _torch_decode(
        self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor
    ) -> torch.Tensor:
        meta = self.meta
        bt, lens = meta.decode_block_tables, meta.decode_context_lens
        assert bt is not None and lens is not None
        d, width = bt.shape
        bs, kv_heads, head_dim = k_cache.shape[1:]
        idx = bt.reshape(-1)
        keys = k_cache.index_select(0, idx).view(d, -1, kv_heads, head_dim).transpose(1, 2)
        values = v_cache.index_select(0, idx).view(d, -1, kv_heads, head_dim).transpose(1, 2)
        mask = torch.arange(width * bs, device=q.device).unsqueeze(0) < lens.unsqueeze(1)
        out = F.scaled_dot_product_attention(
            q.unsqueeze(2), keys, values, attn_mask=mask.view(d, 1, 1, -1), scale=self.scale,
            enable_gqa=True,
        )  # fmt: skip
        return out.squeeze(2)


def _triton_available() -> bool:
    # Imported only when Triton may be used: the import fixes Triton's interpreter mode.
    from tokenfactory.kernels.triton_attention import triton_available

    return triton_available()


def resolve_backend(config: EngineConfig, device: torch.device) -> str:
    if config.attention_backend == "auto":
        return "triton" if device.type == "cuda" and _triton_available() else "torch"
    if config.attention_backend == "triton" and not _triton_available():
        raise ValueError("attention_backend='triton' needs Triton (it ships with CUDA PyTorch)")
    return config.attention_backend


def wants_fast_path(config: EngineConfig, device: torch.device) -> bool:
    """The classic runner stays in charge on CPU unless a test asks for the fast path."""
    return (
        device.type == "cuda" or config.attention_backend == "triton" or bool(config.static_decode)
    )


def triton_shapes_ok(model: LlamaForCausalLM) -> bool:
    """The Triton kernels need power-of-two head sizes (tl.arange)."""
    cfg = model.config
    hd = cfg.head_dim or 0
    return hd >= 16 and hd & (hd - 1) == 0


class FastRunner:
    """Runs steps on the fast path; `ModelRunner.execute` hands every step to it."""

    def __init__(self, model: LlamaForCausalLM, cache: KVCache, config: EngineConfig):
        self.model = model
        self.cache = cache
        self.device = model.device
        self.block_size = cache.block_size
        backend = resolve_backend(config, self.device)
        if backend == "triton" and not triton_shapes_ok(model):
            log.warning("head_dim %s is not a power of two: torch attention", model.config.head_dim)
            backend = "torch"
        self.backend = backend
        self.fused_ops = backend == "triton"
        assert model.config.head_dim is not None
        self.scale = model.config.head_dim**-0.5
        self.num_sms = (
            torch.cuda.get_device_properties(self.device).multi_processor_count
            if self.device.type == "cuda"
            else 0
        )
        self.graphs = None
        capture = self.device.type == "cuda" and config.cuda_graphs and backend == "triton"
        static = config.static_decode if config.static_decode is not None else capture
        if static:
            from tokenfactory.engine.cuda_graphs import DecodeGraphRunner

            max_len = config.max_model_len or model.rotary.max_positions
            self.graphs = DecodeGraphRunner(
                self,
                max_batch=min(config.max_num_seqs, config.cuda_graph_max_batch),
                max_blocks_per_seq=-(-max_len // self.block_size),
                capture=capture,
            )
            self.graphs.prepare()

    def decode_splits(self, batch: int) -> int:
        if self.backend != "triton" or not self.num_sms:
            return 1
        from tokenfactory.kernels.triton_attention import decode_splits

        return decode_splits(batch, self.model.config.num_key_value_heads, self.num_sms)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, attention) -> torch.Tensor:
        if self.fused_ops:
            return self.model.forward_fused(input_ids, positions, attention)
        return self.model(input_ids, positions, attention, False)

    @torch.inference_mode()
    def execute(self, step: SchedulerOutput) -> torch.Tensor:
        hb = build_host_batch(step, self.block_size)
        packed = PackedStep(hb, self.device, with_tiles=self.backend == "triton")
        if (
            self.graphs is not None
            and hb.is_decode_only
            and hb.num_decodes <= self.graphs.max_batch
        ):
            return self.graphs.run(hb, packed)
        meta = FastMetadata(
            slot_mapping=packed["slots"],
            num_decodes=hb.num_decodes,
            decode_block_tables=packed.get("dec_bt"),
            decode_context_lens=packed.get("dec_lens"),
            decode_splits=self.decode_splits(hb.num_decodes),
            prefill_q_start=packed.get("pq_start"),
            prefill_q_len=packed.get("pq_len"),
            prefill_ctx=packed.get("p_ctx"),
            prefill_block_tables=packed.get("p_bt"),
            tile_span=packed.get("tile_span"),
            tile_m0=packed.get("tile_m0"),
            host=hb,
        )
        attention = FastPagedAttention(self.cache, meta, self.scale, self.backend)
        hidden = self.forward(packed["ids"], packed["positions"], attention)
        if len(hb.sample_rows) != hidden.shape[0]:
            hidden = hidden.index_select(0, packed["sample_rows"])
        return self.model.compute_logits(hidden)
