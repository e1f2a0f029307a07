"""Fused residual-add + RMSNorm for decode-sized bf16 batches on CPU.

At a handful of rows each PyTorch op costs far more in dispatch than in arithmetic; the norm
replaces three ops with one vectorised C call (2026-11-27, 2-core VM: 15 vs 26 us at 8 rows,
21 vs 27 us at 16; PyTorch's threaded ops catch up near 64 rows). It rounds once, from float32
(PyTorch's bf16 `rms_norm` rounds elsewhere: see MAX_NORM_ROWS), and PyTorch is the fallback
wherever the native library or AVX2 is unavailable.

The SiLU gate has no kernel here (it runs in PyTorch, `models.llama.silu_mul`): a native
version (scalar, then AVX2 and AVX-512 with a polynomial exp) was measured no faster than
PyTorch's two vectorised ops at any row count, and the scalar one cost ~2.5 ms per decode step
at 8 rows.
"""

from __future__ import annotations

import ctypes
import logging
from pathlib import Path

import torch
import torch.nn.functional as F

from tokenfactory.kernels import _build

log = logging.getLogger(__name__)

# Prompt chunks of up to this many rows take the kernel too, although PyTorch's threaded ops
# are as fast from ~64 rows: F.rms_norm rounds differently on bf16, and with it on the prompt
# rows the embedded model's greedy answer to "What is the capital of France?" flips from
# "The capital of France is Paris." to "L'Etoile, ...".
MAX_NORM_ROWS = 256

_SOURCE = Path(__file__).with_name("fused_ops.c")
_FLAGS = ["-O3", "-march=x86-64-v3", "-ffp-contract=off"]
_REQUIRED_CPU = frozenset({"avx2", "fma", "f16c", "bmi2", "movbe"})  # x86-64-v3
_lib: ctypes.CDLL | None = None


def _load_library() -> bool:
    global _lib
    if _build.native_disabled() or _build.find_compiler() is None:
        return False
    if not _REQUIRED_CPU <= _build.cpu_flags():
        log.info("CPU lacks %s: add+RMSNorm runs in PyTorch", sorted(_REQUIRED_CPU))
        return False
    lib = _build.load_library("fused_ops", _SOURCE, _FLAGS)
    if lib is None:
        return False
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    lib.tf_add_rms_norm_bf16.argtypes = [
        ptr, i64, ptr, i64, ptr, ptr, i64, i64, i64, ctypes.c_float, ctypes.c_int,
    ]
    _lib = lib
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
    if x.dim() == 2 and weight.is_contiguous() and _native_ok(
        MAX_NORM_ROWS, x, *(() if residual is None else (residual,))
    ):
        m, n = x.shape
        assert _lib is not None
        if residual is None:
            new_residual = torch.empty_like(x)
        else:
            new_residual = residual  # updated in place: the old value is not needed again
        out = torch.empty((m, n), dtype=x.dtype)
        _lib.tf_add_rms_norm_bf16(
            x.data_ptr(), x.stride(0), new_residual.data_ptr(), new_residual.stride(0),
            weight.data_ptr(), out.data_ptr(), n, m, n, eps, residual is not None,
        )  # fmt: skip
        return out, new_residual
    new_residual = x if residual is None else x + residual
    return F.rms_norm(new_residual, (x.shape[-1],), weight, eps), new_residual
