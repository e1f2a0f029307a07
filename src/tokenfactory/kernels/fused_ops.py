"""Fused residual-add + RMSNorm for decode-sized bf16 batches on CPU.

At a handful of rows each PyTorch op costs far more in dispatch than in arithmetic; the norm
replaces three ops with one vectorised native call, the operator
``torch.ops.tokenfactory.add_rms_norm`` (2026-11-27, 2-core VM: 15 vs 26 us at 8 rows,
21 vs 27 us at 16; PyTorch's threaded ops catch up near 64 rows). It rounds once, from float32
(PyTorch's bf16 `rms_norm` rounds elsewhere: see MAX_NORM_ROWS), and PyTorch is the fallback
wherever the native library or AVX2 is unavailable.

The SiLU gate has no kernel here (it runs in PyTorch, `models.llama.silu_mul`): a native
version (scalar, then AVX2 and AVX-512 with a polynomial exp) was measured no faster than
PyTorch's two vectorised ops at any row count, and the scalar one cost ~2.5 ms per decode step
at 8 rows.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F

from tokenfactory.kernels import _build, native

log = logging.getLogger(__name__)

# Prompt chunks of up to this many rows take the kernel too, although PyTorch's threaded ops
# are as fast from ~64 rows: F.rms_norm rounds differently on bf16, and with it on the prompt
# rows the embedded model's greedy answer to "What is the capital of France?" flips from
# "The capital of France is Paris." to "L'Etoile, ...".
MAX_NORM_ROWS = 256

_op: Any = None  # the operator (OpOverload) once loaded


def _load_library() -> bool:
    global _op
    if _build.native_disabled() or not native.load():  # native.load checks x86-64-v3
        return False
    _op = torch.ops.tokenfactory.add_rms_norm.default
    return True


_load = _build.Once(_load_library)


def _native_ok(max_rows: int, *tensors: torch.Tensor) -> bool:
    t = tensors[0]
    if t.shape[0] > max_rows or t.dtype is not torch.bfloat16 or not t.is_cpu:
        return False
    if any(x.stride(-1) != 1 for x in tensors):
        return False
    return _load()


def add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(rms_norm(x + residual) * weight, x + residual); without a residual, x starts it."""
    if (
        x.dim() == 2
        and weight.is_contiguous()
        and weight.dtype is torch.bfloat16
        and _native_ok(MAX_NORM_ROWS, x, *(() if residual is None else (residual,)))
    ):
        if residual is None:
            new_residual = torch.empty_like(x)
        else:
            new_residual = residual  # updated in place: the old value is not needed again
        try:  # the operator checks shapes before it writes anything
            return _op(x, new_residual, weight, eps, residual is not None), new_residual
        except RuntimeError as e:
            log.warning("add_rms_norm fell back to PyTorch: %s", e)
    new_residual = x if residual is None else x + residual
    return F.rms_norm(new_residual, (x.shape[-1],), weight, eps), new_residual
