"""ModelConfig: the shape of a Llama-family network, whatever file it came from."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class RopeScaling:
    """RoPE frequency scaling (`llama3` or `linear`); a config without one uses plain RoPE."""

    kind: str  # "llama3" | "linear"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


@dataclass
class ModelConfig:
    """Everything the forward pass needs to know about a Llama-family model.

    Covers Llama 2/3.x, SmolLM/SmolLM2, Mistral, Qwen2/2.5 (`attention_bias`) and
    Qwen3 (`qk_norm`).
    """

    architecture: str  # "llama" | "mistral" | "qwen2" | "qwen3"
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int | None = None
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    attention_bias: bool = False  # q/k/v projections carry a bias (Qwen2)
    qk_norm: bool = False  # per-head RMSNorm on q and k before RoPE (Qwen3)
    bos_token_id: int | None = None
    eos_token_ids: list[int] = field(default_factory=list)
    name: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )

    @property
    def kv_bytes_per_token(self) -> int:
        """Bytes of K and V one token occupies across all layers, at 2 bytes per element."""
        assert self.head_dim is not None
        return 2 * self.num_hidden_layers * self.num_key_value_heads * self.head_dim * 2

    def num_parameters(self) -> int:
        assert self.head_dim is not None
        h, hd = self.hidden_size, self.head_dim
        q = h * self.num_attention_heads * hd
        kv = 2 * h * self.num_key_value_heads * hd
        o = self.num_attention_heads * hd * h
        mlp = 3 * h * self.intermediate_size
        per_layer = q + kv + o + mlp + 2 * h
        emb = self.vocab_size * h
        head = 0 if self.tie_word_embeddings else emb
        return self.num_hidden_layers * per_layer + emb + head + h
