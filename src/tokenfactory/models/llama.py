"""One Llama-family network: Llama 2/3.x, SmolLM2, Mistral, Qwen2/2.5 and Qwen3.

The model computes on a flat token batch ([T] ids and positions, all sequences of a step
concatenated). Attention, and the KV cache behind it, is not the model's business: each layer
calls the `Attention` object the caller passes in. Nor are the kernels of the small ops
(add+RMSNorm, RoPE, SiLU-mul, the linears): they come from the `Ops` object passed in
(`TorchOps` below by default; the engine passes Triton's on CUDA). One forward serves every
device.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, cast

import torch
import torch.nn.functional as F
from torch import nn

from tokenfactory.kernels import fp8_linear, q4_linear, q8_linear
from tokenfactory.kernels.fused_ops import add_rms_norm
from tokenfactory.kernels.skinny import MAX_M, should_use, skinny_linear
from tokenfactory.models.config import ModelConfig
from tokenfactory.models.rope import RotaryEmbedding, apply_rotary


def linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    batched: bool = False,
) -> torch.Tensor:
    """F.linear, except that decode-sized bf16 batches on CPU take the native skinny kernel,
    which streams the weights at memory speed where oneDNN does not (it falls back itself
    whenever it cannot run). 9..256-row batches take its AMX path in decode steps (`batched`)
    and, while `skinny.BATCHED` is set (the default), in prompt and mixed steps too."""
    if x.shape[0] <= MAX_M and x.dtype is torch.bfloat16 and x.is_cpu:
        n, k = weight.shape
        if should_use(x.shape[0], n, k, batched=batched or None):
            return skinny_linear(x, weight, bias)
    return F.linear(x, weight, bias)


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up, where gate_up = [gate | up] along the last dimension (one fused matmul).
    PyTorch's two vectorised ops: no native kernel beat them on CPU (kernels.fused_ops)."""
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


class Linear(nn.Linear):
    """nn.Linear, plus optionally the same weight as stored in a GGUF file (Q4_1), which
    decode steps of the row counts `q4_linear.reads_q4` names read instead: ~2.7x fewer
    bytes, on int8 activations (`kernels.q4_linear`), each row's result independent of the
    others. Or, after `use_fp8`, the weight in FP8 (e4m3 codes and per-channel scales) for
    every step."""

    q4: q4_linear.Q4Weight | None = None
    fp8: fp8_linear.Fp8Weight | None = None

    def use_fp8(self, input_scale: torch.Tensor | None = None) -> None:
        """Quantize the weight to FP8 in place: the codes take the weight's place (the
        high-precision copy is freed), so the parameters count the bytes a step reads. With
        `input_scale`, the weight's input columns are multiplied by it first (in float32):
        the other half of a smoothing whose norm divides by it (models.fp8_smoothing)."""
        weight = self.weight
        if input_scale is not None:
            weight = weight.detach().float() * input_scale[None, :]
        fp8 = fp8_linear.Fp8Weight.quantize(weight)
        self.weight = nn.Parameter(fp8.codes, requires_grad=False)
        self.weight_scale = nn.Parameter(fp8.scale, requires_grad=False)
        self.fp8, self.q4 = fp8, None

    def forward(self, x: torch.Tensor, batched: bool = False) -> torch.Tensor:
        if self.fp8 is not None:
            return fp8_linear.fp8_linear(x, self.fp8, self.bias)
        if batched and self.q4 is not None and q4_linear.reads_q4(x.shape[0]):
            y = q4_linear.q4_linear(x, self.q4, self.bias)
            if y is not None:
                return y
        return linear(x, self.weight, self.bias, batched)


class Attention(Protocol):
    """Writes this step's K/V for `layer` and attends; q: [T, heads, d], k/v: [T, kv_heads, d]."""

    def __call__(
        self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> torch.Tensor: ...


class DenseCausalAttention:
    """Plain causal attention over one sequence with no cache: the reference for tests."""

    def __call__(
        self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> torch.Tensor:
        out = F.scaled_dot_product_attention(
            q.transpose(0, 1),
            k.transpose(0, 1),
            v.contiguous().transpose(0, 1),
            is_causal=True,
            enable_gqa=True,
        )
        return out.transpose(0, 1)


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # One fused op; it accumulates in float32 for half-precision inputs, like the reference.
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


class Ops(Protocol):
    """The small per-layer ops a forward takes from its caller's backend."""

    def add_rms_norm(
        self, x: torch.Tensor, residual: torch.Tensor | None, norm: RMSNorm
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Add x into the residual stream, then normalise it: (normed, new residual)."""
        ...

    def linear(self, layer: Linear, x: torch.Tensor, decode: bool) -> torch.Tensor: ...

    def rope_tables(
        self, rotary: RotaryEmbedding, positions: torch.Tensor, dtype: torch.dtype
    ) -> Any:
        """What `rope` needs for this step's positions, computed once for all layers."""
        ...

    def rope(self, qk: torch.Tensor, tables: Any) -> torch.Tensor:
        """q and k heads [T, heads + kv_heads, d] rotated (possibly in place)."""
        ...

    def silu_mul(self, gate_up: torch.Tensor) -> torch.Tensor: ...


class TorchOps:
    """PyTorch ops, plus the native CPU kernels where they run (each falls back itself):
    `add_rms_norm` fused on bf16 rows, the skinny and Q4_1 matmuls in `Linear`."""

    def add_rms_norm(
        self, x: torch.Tensor, residual: torch.Tensor | None, norm: RMSNorm
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return add_rms_norm(x, residual, norm.weight, norm.eps)

    def linear(self, layer: Linear, x: torch.Tensor, decode: bool) -> torch.Tensor:
        return layer.forward(x, decode)  # no module hooks: a call saved per matmul

    def rope_tables(
        self, rotary: RotaryEmbedding, positions: torch.Tensor, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return rotary.cos_sin(positions, dtype)

    def rope(self, qk: torch.Tensor, tables: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        # q and k rotate together: one set of elementwise ops instead of two.
        return apply_rotary(qk, *tables)

    def silu_mul(self, gate_up: torch.Tensor) -> torch.Tensor:
        return silu_mul(gate_up)


TORCH_OPS = TorchOps()


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, index: int):
        super().__init__()
        assert config.head_dim is not None
        self.index = index
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim
        h = config.hidden_size
        # q, k and v share one matmul, gate and up another: fewer, larger kernels per step.
        self.qkv_proj = Linear(h, self.q_size + 2 * self.kv_size, bias=config.attention_bias)
        self.o_proj = Linear(self.q_size, h, bias=False)
        self.gate_up_proj = Linear(h, 2 * config.intermediate_size, bias=False)
        self.down_proj = Linear(config.intermediate_size, h, bias=False)
        self.input_layernorm = RMSNorm(h, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(h, config.rms_norm_eps)
        self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps) if config.qk_norm else None
        self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps) if config.qk_norm else None

    def forward(
        self,
        x: torch.Tensor,
        residual: torch.Tensor | None,
        rope: Any,
        attention: Attention,
        ops: Ops,
        decode: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One block on (x, residual): the residual add is fused into the next norm, so the
        block's output is this block's delta plus the running residual stream. `rope` is
        `ops.rope_tables(...)` of the step's positions."""
        t = x.shape[0]
        h, residual = ops.add_rms_norm(x, residual, self.input_layernorm)
        qkv = ops.linear(self.qkv_proj, h, decode)
        qk, v = qkv.split([self.q_size + self.kv_size, self.kv_size], dim=-1)
        qk = qk.view(t, self.num_heads + self.num_kv_heads, self.head_dim)
        if self.q_norm is not None and self.k_norm is not None:
            q, k = qk.split([self.num_heads, self.num_kv_heads], dim=1)
            qk = torch.cat((self.q_norm(q), self.k_norm(k)), dim=1)
        q, k = ops.rope(qk, rope).split([self.num_heads, self.num_kv_heads], dim=1)
        # K and V reach the attention as strided views; a backend copies if it must.
        attn = attention(self.index, q, k, v.view(t, self.num_kv_heads, self.head_dim))
        o = ops.linear(self.o_proj, attn.reshape(t, self.q_size), decode)
        h, residual = ops.add_rms_norm(o, residual, self.post_attention_layernorm)
        gate_up = ops.linear(self.gate_up_proj, h, decode)
        return ops.linear(self.down_proj, ops.silu_mul(gate_up), decode), residual


class LlamaForCausalLM(nn.Module):
    # The logits' weight as stored in a GGUF file (Q8_0), which decode steps read instead.
    lm_head_q8: q8_linear.Q8Weight | None = None

    def __init__(self, config: ModelConfig, max_positions: int | None = None):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(
            DecoderLayer(config, i) for i in range(config.num_hidden_layers)
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.lm_head = (
            None
            if config.tie_word_embeddings
            else Linear(config.hidden_size, config.vocab_size, bias=False)
        )
        self.rotary = RotaryEmbedding(config, max_positions or config.max_position_embeddings)

    @property
    def decoder_layers(self) -> list[DecoderLayer]:
        """The layers, typed (iterating an nn.ModuleList yields plain Modules)."""
        return cast(list[DecoderLayer], list(self.layers))

    @property
    def dtype(self) -> torch.dtype:
        return self.embed_tokens.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.embed_tokens.weight.device

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        attention: Attention,
        decode: bool = False,
        ops: Ops = TORCH_OPS,
    ) -> torch.Tensor:
        """Hidden states [T, hidden] for a flat batch of tokens; `decode` says every token is
        one sequence's next token (it only selects kernels, never changes the math)."""
        x = self.embed_tokens(input_ids)
        rope = ops.rope_tables(self.rotary, positions, x.dtype)
        residual = None
        for layer in self.layers:
            x, residual = layer(x, residual, rope, attention, ops, decode)
        return ops.add_rms_norm(x, residual, self.norm)[0]

    def compute_logits(self, hidden: torch.Tensor, decode: bool = False) -> torch.Tensor:
        # Decode steps read the Q8_0 form where attached (32 MB instead of 57 MB on the embedded
        # model): each row's logits those of the bf16 kernel's one-row path.
        q8 = self.lm_head_q8
        if decode and q8 is not None and q4_linear.reads_q4(hidden.shape[0]):
            y = q8_linear.q8_linear(hidden, q8)
            if y is not None:
                return y
        if self.lm_head is not None:
            return self.lm_head.forward(hidden, decode)
        return linear(hidden, self.embed_tokens.weight, batched=decode)

    @torch.inference_mode()
    def forward_dense(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Logits [T, vocab] for one sequence, no cache: the reference path for tests."""
        positions = torch.arange(input_ids.shape[0], device=input_ids.device)
        return self.compute_logits(self.forward(input_ids, positions, DenseCausalAttention()))

    # -- weights -------------------------------------------------------------------------------

    def row_exact_decode_rows(self) -> int | None:
        """Up to how many rows a decode step computes each row exactly as a one-row step would
        (the stored Q4_1/Q8_0 weights' kernels on CPU); None where that is not known."""
        if not any(isinstance(m, Linear) and m.q4 is not None for m in self.modules()):
            return None
        return q4_linear.decode_max_rows() or None

    def quantize_fp8(self, calibration_ids: Sequence[int] | None = None) -> int:
        """Put every layer linear (q/k/v, o, gate/up, down) and an untied lm_head in FP8
        (kernels.fp8_linear); a tied lm_head stays in the model's dtype, since the embedding
        lookups need that table anyway and a second, FP8 copy would add bytes, not save them.
        With `calibration_ids` (tokens of a calibration text), the activations read by q/k/v
        and gate/up are smoothed first (models.fp8_smoothing). Raises Fp8UnsupportedError
        (naming the requirement) where FP8 cannot run. Returns how many linears were
        quantized."""
        fp8_linear.check_supported(self.device, self.dtype)
        linears = [
            m
            for layer in self.decoder_layers
            for m in (layer.qkv_proj, layer.o_proj, layer.gate_up_proj, layer.down_proj)
        ]
        if self.lm_head is not None:
            linears.append(self.lm_head)
        for m in linears:  # every shape checked before any weight changes
            fp8_linear.check_shape(m.out_features, m.in_features, self.device)
        factors: dict[Linear, torch.Tensor] = {}
        if calibration_ids:
            from tokenfactory.models import fp8_smoothing  # it builds on this module

            factors = fp8_smoothing.smooth(self, calibration_ids)
        for m in linears:
            m.use_fp8(factors.get(m))
        self.lm_head_q8 = None
        return len(linears)

    def attach_q4_weights(self, weights: dict[str, q4_linear.Q4Weight | q8_linear.Q8Weight]) -> int:
        """Give the layer linears their Q4_1 form (HF names, as `load_hf_state_dict` takes
        the dequantized weights), fusing q/k/v and gate/up alike; a linear whose parts are
        not all there keeps reading bf16. The logits read a Q8_0 lm_head (or tied embedding)
        if there is one. Only for bf16 weights on a CPU where the kernels run. Returns how
        many layer linears read Q4_1 from now on."""
        if self.device.type != "cpu" or self.dtype is not torch.bfloat16:
            return 0
        if any(isinstance(m, Linear) and m.fp8 is not None for m in self.modules()):
            return 0  # FP8 weights are what the linears read
        if not weights or not q4_linear.available():
            return 0
        head = self.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        q8 = weights.get("model.embed_tokens.weight" if self.lm_head is None else "lm_head.weight")
        if isinstance(q8, q8_linear.Q8Weight):
            if q8.shape != tuple(head.shape):
                raise ValueError(
                    f"Q8_0 logits weight has shape {q8.shape}, expected {tuple(head.shape)}"
                )
            self.lm_head_q8 = q8
        attached = 0
        for i, layer in enumerate(self.decoder_layers):
            p = f"model.layers.{i}."
            for module, names in (
                (layer.qkv_proj, ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
                (layer.o_proj, ("self_attn.o_proj",)),
                (layer.gate_up_proj, ("mlp.gate_proj", "mlp.up_proj")),
                (layer.down_proj, ("mlp.down_proj",)),
            ):
                parts = [weights.get(f"{p}{n}.weight") for n in names]
                q4_parts = [w for w in parts if isinstance(w, q4_linear.Q4Weight)]
                if len(q4_parts) != len(parts):
                    continue
                fused = q4_linear.Q4Weight.cat(q4_parts)
                if fused.shape != tuple(module.weight.shape):
                    raise ValueError(
                        f"Q4_1 weight for layer {i} {names[0]} has shape {fused.shape}, "
                        f"expected {tuple(module.weight.shape)}"
                    )
                module.q4 = fused
                attached += 1
        return attached

    def load_hf_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Copy weights named as in Hugging Face checkpoints, fusing q/k/v and gate/up."""
        missing: list[str] = []

        def take(name: str) -> torch.Tensor:
            if name not in state:
                missing.append(name)
                return torch.empty(0)
            return state[name]

        def put(param: torch.Tensor, *names: str) -> None:
            parts = [take(n) for n in names]
            if any(p.numel() == 0 for p in parts):
                return
            value = torch.cat(parts, dim=0) if len(parts) > 1 else parts[0]
            if tuple(value.shape) != tuple(param.shape):
                raise ValueError(
                    f"weight {names[0]} has shape {tuple(value.shape)}, "
                    f"expected {tuple(param.shape)}"
                )
            with torch.no_grad():
                param.copy_(value.to(param.dtype))

        put(self.embed_tokens.weight, "model.embed_tokens.weight")
        put(self.norm.weight, "model.norm.weight")
        if self.lm_head is not None:
            put(self.lm_head.weight, "lm_head.weight")
        for i, layer in enumerate(self.decoder_layers):
            p = f"model.layers.{i}."
            attn = p + "self_attn."
            put(
                layer.qkv_proj.weight,
                attn + "q_proj.weight",
                attn + "k_proj.weight",
                attn + "v_proj.weight",
            )
            if layer.qkv_proj.bias is not None:
                put(
                    layer.qkv_proj.bias,
                    attn + "q_proj.bias",
                    attn + "k_proj.bias",
                    attn + "v_proj.bias",
                )
            put(layer.o_proj.weight, attn + "o_proj.weight")
            put(layer.gate_up_proj.weight, p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight")
            put(layer.down_proj.weight, p + "mlp.down_proj.weight")
            put(layer.input_layernorm.weight, p + "input_layernorm.weight")
            put(layer.post_attention_layernorm.weight, p + "post_attention_layernorm.weight")
            if layer.q_norm is not None and layer.k_norm is not None:
                put(layer.q_norm.weight, attn + "q_norm.weight")
                put(layer.k_norm.weight, attn + "k_norm.weight")
        if missing:
            shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
            raise ValueError(f"checkpoint lacks {len(missing)} weights: {shown}")

    def init_random_weights(self, seed: int = 0, std: float = 0.02) -> None:
        """Random weights for benchmarks: speed does not depend on weight values."""
        if any(isinstance(m, Linear) and m.fp8 is not None for m in self.modules()):
            raise ValueError("random weights go in before FP8 quantization (build_model's order)")
        gen = torch.Generator(device=self.device).manual_seed(seed)
        with torch.no_grad():
            for name, param in self.named_parameters():
                if "norm" in name:
                    param.fill_(1.0)
                else:
                    param.normal_(0.0, std, generator=gen)
