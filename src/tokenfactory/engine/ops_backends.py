"""The small per-layer ops of the one model forward (`models.llama.Ops`), per backend.

- `TorchOps` (defined with the model, its default): PyTorch ops plus the native CPU kernels
  (fused add+RMSNorm, the skinny and Q4_1 matmuls), each falling back to PyTorch itself.
- `TritonOps`: one Triton launch each for add+RMSNorm, SiLU-mul and RoPE (in place on the
  q/k view of the qkv output, reading the float32 tables by position); matmuls are cuBLAS
  (FP8 weights: `torch._scaled_mm`, through the layer).
  They round once from float32 where PyTorch rounds bf16 intermediates (within bf16
  tolerance of TorchOps; tests compare them).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tokenfactory.models.llama import TORCH_OPS, Linear, RMSNorm, TorchOps
from tokenfactory.models.rope import RotaryEmbedding

__all__ = ["TORCH_OPS", "TorchOps", "TritonOps"]


class TritonOps:
    def __init__(self) -> None:
        # Imported here: only the Triton backend loads Triton (the import fixes its mode).
        from tokenfactory.kernels import triton_fused

        self._k = triton_fused

    def add_rms_norm(
        self, x: torch.Tensor, residual: torch.Tensor | None, norm: RMSNorm
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self._k.add_rms_norm(x, residual, norm.weight, norm.eps)

    def linear(self, layer: Linear, x: torch.Tensor, decode: bool) -> torch.Tensor:
        if layer.fp8 is not None:  # FP8 weights: the scaled e4m3 matmul (kernels.fp8_linear)
            return layer.forward(x, decode)
        return F.linear(x, layer.weight, layer.bias)

    def rope_tables(
        self, rotary: RotaryEmbedding, positions: torch.Tensor, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return positions, rotary.cos, rotary.sin

    def rope(
        self, qk: torch.Tensor, tables: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    ) -> torch.Tensor:
        return self._k.rope_(qk, *tables)

    def silu_mul(self, gate_up: torch.Tensor) -> torch.Tensor:
        return self._k.silu_mul(gate_up)
