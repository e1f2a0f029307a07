"""Published model shapes by name, for benchmarks with random weights (no download needed).

Values follow each model's config.json on the Hugging Face Hub.
"""

from __future__ import annotations

import copy

from tokenfactory.models.config import ModelConfig, RopeScaling
from tokenfactory.models.errors import UnsupportedArchitectureError

_LLAMA3_EOS = [128001, 128008, 128009]  # <|end_of_text|>, <|eom_id|>, <|eot_id|>
_QWEN_EOS = [151645, 151643]  # <|im_end|>, <|endoftext|>


def _llama3_scaling(factor: float) -> RopeScaling:
    return RopeScaling(
        kind="llama3",
        factor=factor,
        low_freq_factor=1.0,
        high_freq_factor=4.0,
        original_max_position_embeddings=8192,
    )


ARCHITECTURES: dict[str, ModelConfig] = {
    "llama-3.1-8b": ModelConfig(
        architecture="llama", vocab_size=128256, hidden_size=4096, intermediate_size=14336,
        num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
        rms_norm_eps=1e-5, rope_theta=500000.0, rope_scaling=_llama3_scaling(8.0),
        max_position_embeddings=131072, tie_word_embeddings=False,
        bos_token_id=128000, eos_token_ids=_LLAMA3_EOS, name="llama-3.1-8b",
    ),
    "llama-3.2-3b": ModelConfig(
        architecture="llama", vocab_size=128256, hidden_size=3072, intermediate_size=8192,
        num_hidden_layers=28, num_attention_heads=24, num_key_value_heads=8, head_dim=128,
        rms_norm_eps=1e-5, rope_theta=500000.0, rope_scaling=_llama3_scaling(32.0),
        max_position_embeddings=131072, tie_word_embeddings=True,
        bos_token_id=128000, eos_token_ids=_LLAMA3_EOS, name="llama-3.2-3b",
    ),
    "llama-3.2-1b": ModelConfig(
        architecture="llama", vocab_size=128256, hidden_size=2048, intermediate_size=8192,
        num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8, head_dim=64,
        rms_norm_eps=1e-5, rope_theta=500000.0, rope_scaling=_llama3_scaling(32.0),
        max_position_embeddings=131072, tie_word_embeddings=True,
        bos_token_id=128000, eos_token_ids=_LLAMA3_EOS, name="llama-3.2-1b",
    ),
    "mistral-7b": ModelConfig(  # Mistral-7B-Instruct-v0.3
        architecture="mistral", vocab_size=32768, hidden_size=4096, intermediate_size=14336,
        num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
        rms_norm_eps=1e-5, rope_theta=1000000.0, max_position_embeddings=32768,
        tie_word_embeddings=False, bos_token_id=1, eos_token_ids=[2], name="mistral-7b",
    ),
    "qwen3-0.6b": ModelConfig(
        architecture="qwen3", vocab_size=151936, hidden_size=1024, intermediate_size=3072,
        num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8, head_dim=128,
        rms_norm_eps=1e-6, rope_theta=1000000.0, max_position_embeddings=40960,
        tie_word_embeddings=True, qk_norm=True, eos_token_ids=_QWEN_EOS, name="qwen3-0.6b",
    ),
    "qwen3-1.7b": ModelConfig(
        architecture="qwen3", vocab_size=151936, hidden_size=2048, intermediate_size=6144,
        num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8, head_dim=128,
        rms_norm_eps=1e-6, rope_theta=1000000.0, max_position_embeddings=40960,
        tie_word_embeddings=True, qk_norm=True, eos_token_ids=_QWEN_EOS, name="qwen3-1.7b",
    ),
    "qwen3-8b": ModelConfig(
        architecture="qwen3", vocab_size=151936, hidden_size=4096, intermediate_size=12288,
        num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
        rms_norm_eps=1e-6, rope_theta=1000000.0, max_position_embeddings=40960,
        tie_word_embeddings=False, qk_norm=True, eos_token_ids=_QWEN_EOS, name="qwen3-8b",
    ),
    "qwen2.5-0.5b": ModelConfig(
        architecture="qwen2", vocab_size=151936, hidden_size=896, intermediate_size=4864,
        num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2, head_dim=64,
        rms_norm_eps=1e-6, rope_theta=1000000.0, max_position_embeddings=32768,
        tie_word_embeddings=True, attention_bias=True, eos_token_ids=_QWEN_EOS,
        name="qwen2.5-0.5b",
    ),
    "qwen2.5-7b": ModelConfig(
        architecture="qwen2", vocab_size=152064, hidden_size=3584, intermediate_size=18944,
        num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4, head_dim=128,
        rms_norm_eps=1e-6, rope_theta=1000000.0, max_position_embeddings=32768,
        tie_word_embeddings=False, attention_bias=True, eos_token_ids=_QWEN_EOS,
        name="qwen2.5-7b",
    ),
    "smollm2-135m": ModelConfig(
        architecture="llama", vocab_size=49152, hidden_size=576, intermediate_size=1536,
        num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3, head_dim=64,
        rms_norm_eps=1e-5, rope_theta=100000.0, max_position_embeddings=8192,
        tie_word_embeddings=True, bos_token_id=1, eos_token_ids=[2], name="smollm2-135m",
    ),
}  # fmt: skip


def architecture_names() -> list[str]:
    return sorted(ARCHITECTURES)


def get_architecture(name: str) -> ModelConfig:
    """A fresh copy of the named architecture's config (callers may modify it)."""
    key = name.strip().lower()
    if key not in ARCHITECTURES:
        raise UnsupportedArchitectureError(
            f"unknown architecture {name!r}; known architectures: {', '.join(architecture_names())}"
        )
    return copy.deepcopy(ARCHITECTURES[key])
