"""ModelRunner: turns a scheduled step into tensors, runs the model, returns logits to sample.

One path on every device: the step's inputs are built on the host with array ops
(`step_inputs`), shipped in one copy, and run through the one model forward with the
attention and small-ops backends chosen for the device (`backend_selection`). Decode-only
steps may go through `cuda_graphs.DecodeGraphRunner` (static buffers, batch padded to a
bucket, a captured graph replayed where CUDA allows), which calls the same forward. On the
native CPU backend, decode steps whose linears read Q4_1 run the forward's layers as one
native call (`cpu_decode_stack`): the same kernels and results, without the per-op Python.
There, a step that also computes prompt tokens runs its decodes apart first, as a decode-only
step (`_decodes_apart`), so a decoded token rounds the same whatever shares its step.
"""

from __future__ import annotations

import math

import torch

from tokenfactory.engine.attention import AttentionMetadata, KVCache, StepAttention
from tokenfactory.engine.backend_selection import Backends, make_backends, resolve_attention_backend
from tokenfactory.engine.config import EngineConfig
from tokenfactory.engine.cpu_decode_stack import CpuDecodeStack
from tokenfactory.engine.scheduler import SchedulerOutput
from tokenfactory.engine.step_inputs import TokenFill, build_step_inputs, ship
from tokenfactory.kernels import q4_linear
from tokenfactory.models.llama import LlamaForCausalLM


class ModelRunner:
    """Owns the model and its KV cache; knows nothing about requests beyond token positions."""

    def __init__(
        self,
        model: LlamaForCausalLM,
        cache: KVCache,
        config: EngineConfig | None = None,
        backends: Backends | None = None,
    ):
        config = config or EngineConfig()
        self.model = model
        self.cache = cache
        self.block_size = cache.block_size
        self.device = model.device
        name = resolve_attention_backend(config.attention_backend, self.device, model.config)
        self.backends = backends or make_backends(name, cache, model.config, self.device)
        self.attention = self.backends.attention
        self.ops = self.backends.ops
        self.decode_stack: CpuDecodeStack | None = None
        # Decode steps read stored Q4_1 weights here (on int8 activations): a token decoded
        # beside prompt tokens must read them too, or its rounding would depend on the step.
        # So a step with prompt tokens runs its decodes apart (`_decodes_apart`).
        self.decodes_apart = (
            self.device.type == "cpu" and model.row_exact_decode_rows() is not None
        )
        if name == "cpu" and config.cpu_decode_stack:
            scale = self.attention.scale
            head_dim = model.config.head_dim or 1
            self.decode_stack = CpuDecodeStack.build(
                model, cache, scale if scale is not None else 1.0 / math.sqrt(head_dim)
            )
        self.graphs = None
        capture = self.device.type == "cuda" and config.cuda_graphs and name == "triton"
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

    @property
    def backend(self) -> str:
        """The attention backend's name: "cpu", "torch" or "triton"."""
        return self.attention.name

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        meta: AttentionMetadata,
        decode: bool,
    ) -> torch.Tensor:
        """Hidden states [T, hidden] of the one model forward over this step's metadata."""
        stack = self.decode_stack
        if decode and stack is not None and stack.takes(input_ids.shape[0], meta):
            return stack(input_ids, positions, meta)
        attention = StepAttention(self.attention, meta)
        return self.model(input_ids, positions, attention, decode, self.ops)

    @torch.inference_mode()
    def execute(self, step: SchedulerOutput, fill: TokenFill | None = None) -> torch.Tensor:
        """Run one step; logits [N, vocab] for the rows that sample, in chunk order (one per
        sampling chunk, 1 + its draft for a chunk that verifies one). `fill`: decode inputs
        that come from the previous step's sampled ids on the device (decodes lead a step,
        so they are rows of its first part when it runs apart)."""
        apart = self._decodes_apart(step)
        if apart is not None:
            decodes, prompts = apart
            return torch.cat([self.execute(decodes, fill), self.execute(prompts)])
        inputs = build_step_inputs(step, self.block_size)
        if (
            inputs.is_decode_only
            and self.graphs is not None
            and inputs.num_decodes <= self.graphs.max_batch
        ):
            return self.graphs.run(inputs, fill)
        # Decodes and the drafts they verify are a few rows each: the linears' decode path
        # (the skinny kernels, Q4_1 weights on CPU) suits them; prompt chunks take the other.
        decode = step.num_prefill_tokens == 0
        extra = self.attention.host_arrays(inputs)
        dev = ship(inputs.arrays() | extra, self.device)
        splits = self.attention.decode_splits(inputs.num_decodes)
        meta = AttentionMetadata.for_step(inputs, dev, splits, extra)
        if fill is not None:
            fill.apply(dev["token_ids"])
        hidden = self.forward(dev["token_ids"], dev["positions"], meta, decode)
        if len(inputs.sample_rows) != hidden.shape[0]:
            hidden = hidden.index_select(0, dev["sample_rows"])
        return self.model.compute_logits(hidden, decode)

    def _decodes_apart(self, step: SchedulerOutput) -> tuple[SchedulerOutput, ...] | None:
        """A step of decodes and prompt chunks, as two steps run one after the other: its
        decodes alone (the decode path a decode-only step of them takes), then its prompt
        chunks. Only where decode steps read the Q4_1 route: each decoded token is then
        computed with the same kernels and roundings whatever prompt tokens share its step, so
        greedy text does not depend on when other requests arrive. Sequences never read each
        other's K/V, so the split changes nothing else. The logits keep the step's order
        (decodes lead it)."""
        if not self.decodes_apart or step.num_prefill_tokens == 0:
            return None
        n = 0
        while n < len(step.chunks) and (step.chunks[n].is_decode or step.chunks[n].draft):
            n += 1
        rows = sum(1 + len(c.draft) for c in step.chunks[:n])
        if n == 0 or n == len(step.chunks) or not q4_linear.reads_q4(rows):
            return None
        decodes = SchedulerOutput(step.chunks[:n], [], 0, rows)
        prompts = SchedulerOutput(step.chunks[n:], [], step.num_prefill_tokens, 0)
        return decodes, prompts
