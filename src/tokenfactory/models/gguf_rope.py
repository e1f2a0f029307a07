"""Recovering Llama 3 RoPE scaling parameters from a GGUF's `rope_freqs.weight` tensor.

GGUF has no metadata for llama3-style scaling: convert_hf_to_gguf bakes it into a per-frequency
divisor tensor. The forward pass computes llama3 scaling from a RopeScaling, so we search the
few parameter sets Meta has published for one that reproduces the tensor.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from tokenfactory.models.config import RopeScaling

_ORIGINAL_CONTEXTS = (8192, 4096, 2048, 16384, 32768, 65536, 131072)
_LOW_FREQ_FACTORS = (1.0, 2.0, 0.5)
_HIGH_FREQ_FACTORS = (4.0, 8.0, 2.0, 1.0)


def llama3_freq_divisors(head_dim: int, theta: float, scaling: RopeScaling) -> np.ndarray:
    """What convert_hf_to_gguf writes as rope_freqs: inv_freq / scaled_inv_freq per pair."""
    inv_freq = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    wavelen = 2 * math.pi / inv_freq
    orig = scaling.original_max_position_embeddings
    low_wavelen = orig / scaling.low_freq_factor
    high_wavelen = orig / scaling.high_freq_factor
    out = np.ones_like(inv_freq)
    for i, wl in enumerate(wavelen):
        if wl < high_wavelen:
            continue
        if wl > low_wavelen:
            out[i] = scaling.factor
        else:
            smooth = (orig / wl - scaling.low_freq_factor) / (
                scaling.high_freq_factor - scaling.low_freq_factor
            )
            out[i] = 1.0 / ((1 - smooth) / scaling.factor + smooth)
    return out


def match_llama3_scaling(freqs: np.ndarray, head_dim: int, theta: float) -> RopeScaling | None:
    """The llama3 RopeScaling that reproduces `freqs`, or None when no known one does."""
    freqs = np.asarray(freqs, dtype=np.float64)
    if freqs.shape != (head_dim // 2,):
        return None
    factor = float(freqs.max())
    for orig, low, high in itertools.product(
        _ORIGINAL_CONTEXTS, _LOW_FREQ_FACTORS, _HIGH_FREQ_FACTORS
    ):
        if high <= low:
            continue
        candidate = RopeScaling(
            kind="llama3",
            factor=factor,
            low_freq_factor=low,
            high_freq_factor=high,
            original_max_position_embeddings=orig,
        )
        if np.allclose(llama3_freq_divisors(head_dim, theta, candidate), freqs, rtol=1e-4):
            return candidate
    return None
