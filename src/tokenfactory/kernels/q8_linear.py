"""Linears straight from GGUF Q8_0 weights, for CPUs with AVX512-BF16: the logits.

GGUF files commonly keep the token embedding (which tied-embedding models such as SmolLM2 also
use as their lm_head) as Q8_0: per 32 weights an fp16 scale d and 32 int8 codes q, w = d*q.
Dequantized to bf16 the embedded model's lm_head reads 57 MB every decode step, as codes and
scales 32 MB. The kernel (``skinny_linear.cpp``, ``torch.ops.tokenfactory.skinny_linear_q8_0``)
expands each block in registers exactly as the loader dequantizes it (d*q is exact in fp32,
then one round to bf16) and does the bf16 AVX512 tile's dot products in its order, so each row
of ``q8_linear`` is bit for bit ``skinny_linear``'s one-row path on the dequantized weight.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from tokenfactory.kernels import skinny

BLOCK_BYTES = 34  # per 32 weights: fp16 d, 32 int8 codes


@dataclass(frozen=True)
class Q8Weight:
    """An [N, K] weight in the kernel's Q8_0 layout: `codes` [N, K] int8 and `d` [N, K/32]
    float32 (each block's scale, widened exactly from fp16)."""

    codes: torch.Tensor
    d: torch.Tensor

    @property
    def shape(self) -> tuple[int, int]:
        return self.codes.shape[0], self.codes.shape[1]

    @staticmethod
    def from_gguf_blocks(raw: np.ndarray) -> Q8Weight:
        """From raw Q8_0 data [N, K/32 * 34] bytes (rows of a GGUF tensor, numpy order)."""
        n, row_bytes = raw.shape
        if raw.dtype != np.uint8 or row_bytes % BLOCK_BYTES:
            raise ValueError(f"not Q8_0 rows: {raw.dtype} [{n}, {row_bytes}]")
        blocks = np.ascontiguousarray(raw).reshape(n, row_bytes // BLOCK_BYTES, BLOCK_BYTES)
        d = blocks[:, :, :2].copy().view(np.float16).astype(np.float32).reshape(n, -1)
        codes = np.ascontiguousarray(blocks[:, :, 2:]).view(np.int8).reshape(n, -1)
        return Q8Weight(torch.from_numpy(codes), torch.from_numpy(np.ascontiguousarray(d)))

    def dequantize(self) -> torch.Tensor:
        """The float32 weight, as the GGUF loader computes it (d * q)."""
        n, k = self.codes.shape
        q = self.codes.view(n, k // 32, 32).float()
        return (self.d.unsqueeze(-1) * q).reshape(n, k)


def available() -> bool:
    """True if the kernel can run here: it lives in ``skinny_linear``'s native library."""
    return skinny.available()


def q8_linear(
    x: torch.Tensor, weight: Q8Weight, bias: torch.Tensor | None = None
) -> torch.Tensor | None:
    """x [M, K] bf16 (M <= skinny.MAX_M, rows contiguous) @ weight^T (+ bias): [M, N] bf16,
    each row bit for bit ``skinny_linear``'s AVX512 path on the dequantized weight for that row
    alone; None when the kernel does not take the call (the caller then uses bf16)."""
    return skinny.skinny_linear_q8_0(x, weight.codes, weight.d, bias)
