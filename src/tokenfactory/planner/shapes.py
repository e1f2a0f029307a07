"""What one forward pass of a model reads and computes, from its published shape."""

from __future__ import annotations

from dataclasses import dataclass

from tokenfactory.models.architectures import ARCHITECTURES
from tokenfactory.models.config import ModelConfig

# The embedded model answers to its file's name too.
ALIASES = {"embedded": "smollm2-135m", "smollm2": "smollm2-135m"}
WEIGHT_BYTES = {"bf16": 2, "fp8": 1}  # bytes per weight, or per KV element


class UnknownModelError(ValueError):
    pass


@dataclass(frozen=True)
class ModelShape:
    name: str
    weight_bytes: float  # read by every forward pass
    kv_bytes_per_token: float  # K and V of one token, all layers
    matmul_flops_per_token: float  # the linear layers, per token computed
    attention_flops_per_context_token: float  # per token computed, per token attended over
    max_context: int

    def flops_per_token(self, context: float) -> float:
        return self.matmul_flops_per_token + self.attention_flops_per_context_token * context


def model_shape(name: str, weights: str = "bf16", kv: str = "bf16") -> ModelShape:
    """The shape of a named architecture (see models/architectures.py) at a weight format and
    a KV-cache format."""
    key = ALIASES.get(name.lower(), name.lower())
    if key not in ARCHITECTURES:
        known = ", ".join(sorted([*ARCHITECTURES, *ALIASES]))
        raise UnknownModelError(f"unknown model {name!r}; known: {known}")
    for what, fmt in (("weight", weights), ("KV-cache", kv)):
        if fmt not in WEIGHT_BYTES:
            raise UnknownModelError(f"unknown {what} format {fmt!r}; known: bf16, fp8")
    return shape_of(ARCHITECTURES[key], weights, kv)


def architecture_name(cfg: ModelConfig) -> str:
    """The named architecture a loaded model's shape is (a GGUF names itself otherwise), or
    the model's own name when none matches."""

    def key(c: ModelConfig) -> tuple:
        return (c.vocab_size, c.hidden_size, c.intermediate_size, c.num_hidden_layers,
                c.num_attention_heads, c.num_key_value_heads, c.head_dim,
                c.tie_word_embeddings)

    return next((name for name, c in ARCHITECTURES.items() if key(c) == key(cfg)), cfg.name)


def shape_of(cfg: ModelConfig, weights: str = "bf16", kv_format: str = "bf16") -> ModelShape:
    assert cfg.head_dim is not None
    params = cfg.num_parameters()
    emb = cfg.vocab_size * cfg.hidden_size
    # An untied embedding table is looked up, not read whole; a tied one is the output layer.
    streamed = params - (0 if cfg.tie_word_embeddings else emb)
    matmul = 2 * streamed  # a multiply and an add per streamed weight
    attention = 4 * cfg.num_hidden_layers * cfg.num_attention_heads * cfg.head_dim
    kv = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim
    kv *= WEIGHT_BYTES[kv_format]
    return ModelShape(
        name=cfg.name,
        weight_bytes=float(streamed * WEIGHT_BYTES[weights]),
        kv_bytes_per_token=float(kv),
        matmul_flops_per_token=float(matmul),
        attention_flops_per_context_token=float(attention),
        max_context=cfg.max_position_embeddings,
    )
