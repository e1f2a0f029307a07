"""Draft-model proposals: a smaller model with the same tokenizer guesses the next tokens.

The draft model keeps its own paged KV cache and block accounting (no prefix caching: a
rolled-back draft would otherwise rewrite a registered block). For each request it keeps a
shadow sequence: the request's real tokens, then the draft tokens of its last proposal. Each
proposal first rolls the shadow back to where it still agrees with the request (tokens the
target rejected are dropped, their K/V recomputed when needed), then runs one step over the
tokens the draft has not seen (the whole prompt the first time, the accepted and corrected
tokens afterwards) and samples greedily, and then one decode step per further draft token,
for every speculating request at once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace

import torch

from tokenfactory.engine.attention import KVCache
from tokenfactory.engine.block_manager import BlockManager
from tokenfactory.engine.config import EngineConfig
from tokenfactory.engine.runner import ModelRunner
from tokenfactory.engine.sampling_params import SamplingParams
from tokenfactory.engine.scheduler import ScheduledChunk, SchedulerOutput
from tokenfactory.engine.sequence import Sequence
from tokenfactory.engine.speculation.proposer import DraftRequest
from tokenfactory.models.llama import LlamaForCausalLM

_GREEDY = SamplingParams(temperature=0.0)


class DraftModelProposer:
    name = "draft"

    def __init__(
        self,
        model: LlamaForCausalLM,
        config: EngineConfig,
        num_blocks: int,
        target_vocab_size: int,
    ):
        if model.config.vocab_size != target_vocab_size:
            raise ValueError(
                f"the draft model's vocabulary has {model.config.vocab_size} tokens, the "
                f"target's {target_vocab_size}: a draft model must share the target's tokenizer"
            )
        self.model = model
        # The draft runs plain steps: no CUDA graphs, no static decode buffers.
        config = replace(config, cuda_graphs=False, static_decode=False)
        cache = KVCache.allocate(
            model.config, num_blocks, config.block_size, model.dtype, model.device
        )
        self.runner = ModelRunner(model, cache, config)
        self.blocks = BlockManager(num_blocks, config.block_size, enable_prefix_caching=False)
        self.max_positions = model.rotary.max_positions
        self._shadows: dict[str, Sequence] = {}

    def propose(self, requests: list[DraftRequest]) -> Mapping[str, list[int]]:
        active: list[tuple[Sequence, int]] = []  # (shadow, draft tokens wanted)
        for r in requests:
            shadow = self._sync(r.seq)
            k = min(r.max_tokens, self.max_positions - r.seq.num_tokens)
            # Room for the unseen tokens and the k - 1 draft tokens fed back in.
            if k > 0 and self.blocks.append_slots(shadow, shadow.num_uncomputed_tokens + k - 1):
                active.append((shadow, k))
        drafts: dict[str, list[int]] = {s.request_id: [] for s, _ in active}
        for _ in range(max((k for _, k in active), default=0)):
            wanted = [s for s, k in active if len(drafts[s.request_id]) < k]
            if not wanted:
                break
            for shadow, token in zip(wanted, self._next_tokens(wanted), strict=True):
                shadow.output_token_ids.append(token)
                drafts[shadow.request_id].append(token)
        return drafts

    def retain(self, live_request_ids: Iterable[str]) -> None:
        live = set(live_request_ids)
        for request_id in [r for r in self._shadows if r not in live]:
            self.blocks.free(self._shadows.pop(request_id))

    def _sync(self, seq: Sequence) -> Sequence:
        """The request's shadow, holding its real tokens, its K/V valid as far as they agree."""
        shadow = self._shadows.get(seq.request_id)
        if shadow is None:
            shadow = Sequence(seq.request_id, seq.prompt_token_ids, _GREEDY)
            self._shadows[seq.request_id] = shadow
        mine, real = shadow.output_token_ids, seq.output_token_ids
        same = 0
        for a, b in zip(mine, real, strict=False):
            if a != b:
                break
            same += 1
        shadow.num_computed_tokens = min(
            shadow.num_computed_tokens, shadow.num_prompt_tokens + same
        )
        shadow.output_token_ids = list(real)
        self.blocks.trim(shadow)
        return shadow

    @torch.inference_mode()
    def _next_tokens(self, shadows: list[Sequence]) -> list[int]:
        """One draft step: each shadow's unseen tokens in, its greedy next token out."""
        chunks = [
            ScheduledChunk(s, s.num_computed_tokens, s.num_uncomputed_tokens) for s in shadows
        ]
        decodes = sum(c.num_tokens for c in chunks if c.is_decode)
        prompt = sum(c.num_tokens for c in chunks if not c.is_decode)
        chunks.sort(key=lambda c: not c.is_decode)
        order = [c.seq for c in chunks]
        logits = self.runner.execute(SchedulerOutput(chunks, [], prompt, decodes))
        for c in chunks:
            c.seq.num_computed_tokens += c.num_tokens
        by_shadow = dict(zip(order, logits.argmax(dim=-1).tolist(), strict=True))
        return [by_shadow[s] for s in shadows]
