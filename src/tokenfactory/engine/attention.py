"""Paged attention's data: the KV cache tensors and one step's metadata on the device.

A step's tokens arrive flat, as query spans (`engine.step_inputs`): decodes first, one token
each, then the longer spans. `AttentionMetadata` says where each token's K/V goes (slot =
block * block_size + offset) and which blocks each span reads; the backends that attend over
it are in `engine.attention_backends`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from tokenfactory.models.config import ModelConfig

if TYPE_CHECKING:
    from tokenfactory.engine.attention_backends import AttentionBackend
    from tokenfactory.engine.step_inputs import StepInputs


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


@dataclass(frozen=True)
class Span:
    """A span after the decodes, as host ints: rows [q_start, q_start + q_len) of the batch,
    row `index` of the block tables, attending to the first context_len positions."""

    index: int
    q_start: int
    q_len: int
    context_len: int


@dataclass
class AttentionMetadata:
    """One step on the device. Rows 0..num_decodes-1 are single-token decodes (spans
    0..num_decodes-1); `spans` lists the others for backends that loop over them."""

    slot_mapping: torch.Tensor  # [T] cache slot of each token
    num_decodes: int
    decode_block_tables: torch.Tensor | None  # [D, decode width] (a view)
    decode_context_lens: torch.Tensor | None  # [D]
    block_tables: torch.Tensor | None = None  # [S, W], every span
    q_start: torch.Tensor | None = None  # [S]
    q_len: torch.Tensor | None = None  # [S]
    context_lens: torch.Tensor | None = None  # [S]
    spans: tuple[Span, ...] = ()
    decode_splits: int = 1  # key splits per decode (Triton at small batches)
    extra: dict[str, torch.Tensor] = field(default_factory=dict)  # a backend's own arrays

    @classmethod
    def for_step(
        cls,
        inputs: StepInputs,
        dev: dict[str, torch.Tensor],
        decode_splits: int = 1,
        extra: Iterable[str] = (),
    ) -> AttentionMetadata:
        """From a step's host inputs and their device copies (`step_inputs.ship`); `extra`
        names the arrays a backend added (its `host_arrays`)."""
        d = inputs.num_decodes
        bt, ctx = dev["block_tables"], dev["context_len"]
        spans: tuple[Span, ...] = ()
        if not inputs.is_decode_only:
            starts, lens = inputs.q_start.tolist(), inputs.q_len.tolist()
            ctxs = inputs.context_len.tolist()
            spans = tuple(Span(i, starts[i], lens[i], ctxs[i]) for i in range(d, len(lens)))
        return cls(
            slot_mapping=dev["slots"],
            num_decodes=d,
            decode_block_tables=bt[:d, : inputs.decode_width] if d else None,
            decode_context_lens=ctx[:d] if d else None,
            block_tables=bt,
            q_start=dev["q_start"],
            q_len=dev["q_len"],
            context_lens=ctx,
            spans=spans,
            decode_splits=decode_splits,
            extra={k: dev[k] for k in extra},
        )


@dataclass
class StepAttention:
    """The model's `Attention` call for one step: a backend bound to the step's metadata."""

    backend: AttentionBackend
    meta: AttentionMetadata

    def __call__(
        self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> torch.Tensor:
        return self.backend.forward(layer, q, k, v, self.meta)
