"""A CPU decode step's decoder layers in one native call.

At one decode row a layer's arithmetic is a few microseconds per op, and the Python and
dispatch between its ~60 small ops (views, splits, RoPE's four ops, two index copies, the
norm and linear calls) cost more than the Q4_1 linears' compute. The operator
``torch.ops.tokenfactory.decode_layers`` (kernels/ops.cpp) runs all the layers with the same
kernels the model's forward calls on this backend (add+RMSNorm, Q4_1 linears, paged decode
attention, PyTorch's SiLU) and RoPE plus the K/V write in one native loop, with the same
roundings: its hidden states are bit for bit those of the model's forward.

It takes the steps the forward would run on those kernels: decode-only, every layer linear in
Q4_1 at this row count (`q4_linear.reads_q4`), bf16, the native attention backend, and no
biases, q/k norms or FP8. Every other step, and every model outside that shape, runs the
model's forward as before.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from tokenfactory.engine.attention import AttentionMetadata, KVCache
from tokenfactory.kernels import native, q4_linear
from tokenfactory.kernels.fused_ops import add_rms_norm
from tokenfactory.models.llama import LlamaForCausalLM

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CpuDecodeStack:
    """The operator's per-layer arguments, gathered once: norm weights, Q4_1 codes and
    scales of q/k/v, o, gate/up and down, and the KV cache tensors."""

    model: LlamaForCausalLM
    k_caches: list[torch.Tensor]
    v_caches: list[torch.Tensor]
    norms: list[torch.Tensor]
    codes: list[torch.Tensor]
    scales: list[torch.Tensor]
    heads: int
    eps: float
    attn_scale: float

    @classmethod
    def build(
        cls, model: LlamaForCausalLM, cache: KVCache, attn_scale: float
    ) -> CpuDecodeStack | None:
        """The stack for this model and cache, or None where the operator does not apply
        (the reason is logged at debug level)."""
        reason = _unsupported(model, cache)
        if reason is not None:
            log.debug("decode steps run the model's forward: %s", reason)
            return None
        norms, codes, scales = [], [], []
        for layer in model.decoder_layers:
            norms += [layer.input_layernorm.weight, layer.post_attention_layernorm.weight]
            for linear in (layer.qkv_proj, layer.o_proj, layer.gate_up_proj, layer.down_proj):
                assert linear.q4 is not None  # checked by _unsupported
                codes.append(linear.q4.codes)
                scales.append(linear.q4.dm)
        first = model.decoder_layers[0]
        return cls(
            model=model,
            k_caches=list(cache.k),
            v_caches=list(cache.v),
            norms=[n.detach() for n in norms],
            codes=codes,
            scales=scales,
            heads=first.num_heads,
            eps=first.input_layernorm.eps,
            attn_scale=attn_scale,
        )

    def takes(self, num_rows: int, meta: AttentionMetadata) -> bool:
        """Whether this step is one the operator runs as the forward would."""
        return meta.num_decodes == num_rows and q4_linear.reads_q4(num_rows)

    def __call__(
        self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata
    ) -> torch.Tensor:
        """Hidden states [T, hidden] after the final norm, as `model.forward` returns them."""
        model = self.model
        x = model.embed_tokens(input_ids)
        cos, sin = model.rotary.cos_sin(positions, x.dtype)
        assert meta.decode_block_tables is not None and meta.decode_context_lens is not None
        x, residual = torch.ops.tokenfactory.decode_layers(
            x, cos.squeeze(1), sin.squeeze(1), meta.slot_mapping, meta.decode_block_tables,
            meta.decode_context_lens, self.k_caches, self.v_caches, self.norms, self.codes,
            self.scales, self.heads, self.eps, self.attn_scale,
        )  # fmt: skip
        return add_rms_norm(x, residual, model.norm.weight, model.norm.eps)[0]


def _unsupported(model: LlamaForCausalLM, cache: KVCache) -> str | None:
    """Why the operator cannot run this model's decode steps; None when it can."""
    config = model.config
    if model.device.type != "cpu" or model.dtype is not torch.bfloat16:
        return "not a bf16 model on the CPU"
    if not q4_linear.available() or not native.load():
        return "no native kernels here"
    if config.qk_norm:
        return "q/k norms"
    if config.head_dim is None or config.head_dim % 16:
        return "a head size that is not a multiple of 16"
    if any(k.dtype is not torch.bfloat16 for k in cache.k + cache.v):
        return "a KV cache that is not bf16"
    for layer in model.decoder_layers:
        for linear in (layer.qkv_proj, layer.o_proj, layer.gate_up_proj, layer.down_proj):
            if linear.q4 is None or linear.fp8 is not None:
                return "a layer linear without Q4_1 weights"
            if linear.bias is not None:
                return "a linear with a bias"
    return None
