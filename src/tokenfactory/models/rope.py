"""Rotary position embeddings, with llama3 and linear frequency scaling."""

from __future__ import annotations

import math

import torch

from tokenfactory.models.config import ModelConfig, RopeScaling


def inverse_frequencies(head_dim: int, theta: float, scaling: RopeScaling | None) -> torch.Tensor:
    """Per-pair rotation frequencies, float64 for accuracy before the cache is built."""
    inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    if scaling is None:
        return inv
    if scaling.kind == "linear":
        return inv / scaling.factor
    if scaling.kind == "llama3":
        # Long wavelengths are slowed by `factor`, short ones kept, the band between blended.
        low_wavelen = scaling.original_max_position_embeddings / scaling.low_freq_factor
        high_wavelen = scaling.original_max_position_embeddings / scaling.high_freq_factor
        wavelen = 2 * math.pi / inv
        smooth = (scaling.original_max_position_embeddings / wavelen - scaling.low_freq_factor) / (
            scaling.high_freq_factor - scaling.low_freq_factor
        )
        blended = (1 - smooth) * inv / scaling.factor + smooth * inv
        out = torch.where(wavelen > low_wavelen, inv / scaling.factor, inv)
        mid = (wavelen <= low_wavelen) & (wavelen >= high_wavelen)
        return torch.where(mid, blended, out)
    raise ValueError(f"unsupported rope scaling type {scaling.kind!r}")


class RotaryEmbedding(torch.nn.Module):
    """Precomputed cos/sin tables, looked up once per step and shared by all layers."""

    def __init__(self, config: ModelConfig, max_positions: int):
        super().__init__()
        assert config.head_dim is not None
        freqs = config.extra.get("rope_freqs")
        inv = inverse_frequencies(config.head_dim, config.rope_theta, config.rope_scaling)
        if freqs is not None:  # GGUF files may carry per-pair divisors instead of a scaling rule
            inv = inv / torch.as_tensor(freqs, dtype=torch.float64)
        t = torch.arange(max_positions, dtype=torch.float64)
        angles = torch.outer(t, inv)
        self.cos: torch.Tensor
        self.sin: torch.Tensor
        self.register_buffer("cos", angles.cos().float(), persistent=False)
        self.register_buffer("sin", angles.sin().float(), persistent=False)
        self.max_positions = max_positions

    def cos_sin(
        self, positions: torch.Tensor, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """[T, 1, head_dim] tables for these positions, ready for `apply_rotary`.

        cos is repeated over both halves and sin carries the rotation's sign, so applying
        RoPE costs three elementwise ops and a roll per tensor.
        """
        cos = self.cos.index_select(0, positions)
        sin = self.sin.index_select(0, positions)
        cos = torch.cat((cos, cos), dim=-1).to(dtype).unsqueeze(1)
        sin = torch.cat((-sin, sin), dim=-1).to(dtype).unsqueeze(1)
        return cos, sin


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate [T, heads, head_dim] by the half-split convention used by Hugging Face Llama:
    (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin)."""
    half = x.shape[-1] // 2
    return x * cos + x.roll(half, dims=-1) * sin
