"""ModelRunner: turns a scheduled step into tensors, runs the model, returns logits to sample."""

from __future__ import annotations

import torch

from tokenfactory.engine.attention import (
    AttentionMetadata,
    KVCache,
    PrefillSpan,
    TorchPagedAttention,
)
from tokenfactory.engine.config import EngineConfig
from tokenfactory.engine.scheduler import SchedulerOutput
from tokenfactory.models.llama import LlamaForCausalLM


class ModelRunner:
    """Owns the model and its KV cache; knows nothing about requests beyond token positions.

    On CUDA (or when a test asks for it) steps go to the fast path (`engine.fast_path`:
    Triton paged attention, fused ops, CUDA-graph decode); on CPU the classic path below runs,
    with the native CPU kernels.
    """

    def __init__(self, model: LlamaForCausalLM, cache: KVCache, config: EngineConfig | None = None):
        self.model = model
        self.cache = cache
        self.block_size = cache.block_size
        self.device = model.device
        self.fast = None
        if config is not None:
            from tokenfactory.engine.fast_path import FastRunner, wants_fast_path

            if wants_fast_path(config, self.device):
                self.fast = FastRunner(model, cache, config)

    @torch.inference_mode()
    def execute(self, step: SchedulerOutput) -> torch.Tensor:
        """Run one step; logits [N, vocab] for the chunks that sample, in chunk order."""
        if self.fast is not None:
            return self.fast.execute(step)
        input_ids, positions, meta, sample_rows = self._prepare(step)
        decode = meta.num_decodes == len(step.chunks)
        hidden = self.model(input_ids, positions, TorchPagedAttention(self.cache, meta), decode)
        if len(sample_rows) != hidden.shape[0]:
            index = torch.tensor(sample_rows, dtype=torch.long, device=self.device)
            hidden = hidden.index_select(0, index)
        return self.model.compute_logits(hidden, decode)

    def _prepare(
        self, step: SchedulerOutput
    ) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata, list[int]]:
        bs = self.block_size
        ids: list[int] = []
        pos: list[int] = []
        slots: list[int] = []
        sample_rows: list[int] = []
        decode_tables: list[list[int]] = []
        decode_lens: list[int] = []
        prefills: list[PrefillSpan] = []
        num_decodes = 0
        for chunk in step.chunks:
            seq, start, n = chunk.seq, chunk.start, chunk.num_tokens
            table = seq.block_table
            q_start = len(ids)
            if n == 1 and start > 0 and not prefills:
                # A single new token with context before it: batched decode path.
                num_decodes += 1
                decode_tables.append(table[: (start + bs) // bs])
                decode_lens.append(start + 1)
            else:
                end = start + n
                prefills.append(
                    PrefillSpan(
                        q_start=q_start,
                        q_len=n,
                        context_len=end,
                        block_table=torch.tensor(table[: (end + bs - 1) // bs], dtype=torch.long),
                    )
                )
            for p in range(start, start + n):
                ids.append(seq.token_at(p))
                pos.append(p)
                slots.append(table[p // bs] * bs + p % bs)
            if chunk.samples:
                sample_rows.append(len(ids) - 1)

        dev = self.device
        decode_bt = decode_len = decode_mask = None
        if num_decodes:
            width = max(len(t) for t in decode_tables)
            padded = [t + [0] * (width - len(t)) for t in decode_tables]
            decode_bt = torch.tensor(padded, dtype=torch.long)
            decode_len = torch.tensor(decode_lens, dtype=torch.long)
            key_pos = torch.arange(width * bs)
            decode_mask = (key_pos.unsqueeze(0) < decode_len.unsqueeze(1)).view(
                num_decodes, 1, 1, width * bs
            )
            decode_bt, decode_len, decode_mask = (
                decode_bt.to(dev),
                decode_len.to(dev),
                decode_mask.to(dev),
            )
        for span in prefills:
            span.block_table = span.block_table.to(dev)
        meta = AttentionMetadata(
            slot_mapping=torch.tensor(slots, dtype=torch.long).to(dev),
            num_decodes=num_decodes,
            decode_block_tables=decode_bt,
            decode_context_lens=decode_len,
            decode_mask=decode_mask,
            prefills=prefills,
        )
        input_ids = torch.tensor(ids, dtype=torch.long).to(dev)
        positions = torch.tensor(pos, dtype=torch.long).to(dev)
        return input_ids, positions, meta, sample_rows
