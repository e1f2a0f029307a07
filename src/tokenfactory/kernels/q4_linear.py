"""Decode linears straight from GGUF Q4_1 weights, for CPUs with AVX512-BF16.

A decode step reads every weight once, so its time is the weights' bytes over the memory
bandwidth. The embedded model ships as Q4_1 (per 32 weights: an fp16 scale d and minimum m,
and 32 4-bit codes q; w = d*q + m); dequantized to bf16 it reads ~212 MB of layer weights a
step, kept as codes ~80 MB. `q4_linear` expands each block in registers exactly as the loader
dequantizes it and runs the bf16 kernel's dot products in the same order, so with one row it
returns bit for bit what `skinny_linear` returns on the dequantized weights (and within
rounding of it with more rows, as the AMX path does). The bf16 weights stay too: prompt and
mixed steps, and batches over 8 rows, run on them.

`Q4Weight.from_gguf_blocks` builds the kernel's layout from a tensor's raw GGUF blocks;
`LlamaForCausalLM.attach_q4_weights` hands them to the linears.
"""

from __future__ import annotations

import ctypes
import logging
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tokenfactory.kernels import _build

log = logging.getLogger(__name__)

BLOCK = 32  # weights per Q4_1 block
BLOCK_BYTES = 20  # fp16 d, fp16 m, 16 bytes of codes
MAX_M = 8  # rows of x one call takes
# Decode steps of up to this many sequences read Q4_1: past it the bf16 kernels (AMX) win, as
# expanding the codes costs compute that more rows no longer hide behind the memory reads.
DECODE_MAX_ROWS = 4

_SOURCE = Path(__file__).with_name("q4_linear.c")
_FLAGS = ["-O3", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512bf16", "-mfma", "-fopenmp"]
_REQUIRED_CPU = frozenset({"avx512f", "avx512bw", "avx512vl", "avx512_bf16"})
# x, M, ldx, codes, dm, N, K, bias, out, ldo, threads (see tf_q4_1_linear)
_pack = struct.Struct("=11q").pack
_fn: Callable[..., int] | None = None


@dataclass(frozen=True)
class Q4Weight:
    """An [N, K] weight in the kernel's Q4_1 layout: `codes` [N, K/2] uint8 (block b of a row
    at byte 16 b; byte j holds code j in its low nibble and code j + 16 in its high one) and
    `dm` [N, K/32, 2] float32 (each block's d and m, widened exactly from fp16)."""

    codes: torch.Tensor
    dm: torch.Tensor

    @property
    def shape(self) -> tuple[int, int]:
        return self.codes.shape[0], self.codes.shape[1] * 2

    @staticmethod
    def from_gguf_blocks(raw: np.ndarray) -> Q4Weight:
        """From raw Q4_1 data [N, K/32 * 20] bytes (rows of a GGUF tensor, numpy order)."""
        n, row_bytes = raw.shape
        if raw.dtype != np.uint8 or row_bytes % BLOCK_BYTES:
            raise ValueError(f"not Q4_1 rows: {raw.dtype} [{n}, {row_bytes}]")
        blocks = np.ascontiguousarray(raw).reshape(n, row_bytes // BLOCK_BYTES, BLOCK_BYTES)
        dm = blocks[:, :, :4].copy().view(np.float16).astype(np.float32)
        codes = np.ascontiguousarray(blocks[:, :, 4:]).reshape(n, -1)
        return Q4Weight(torch.from_numpy(codes), torch.from_numpy(np.ascontiguousarray(dm)))

    @staticmethod
    def cat(parts: list[Q4Weight]) -> Q4Weight:
        """Rows of several weights stacked (the fused q/k/v and gate/up projections)."""
        return Q4Weight(torch.cat([p.codes for p in parts]), torch.cat([p.dm for p in parts]))

    def dequantize(self) -> torch.Tensor:
        """The float32 weight, as the GGUF loader computes it ((d * q) + m)."""
        n, half = self.codes.shape
        lo = (self.codes & 0x0F).view(n, -1, 16)
        hi = (self.codes >> 4).view(n, -1, 16)
        q = torch.cat((lo, hi), dim=-1).float()
        d, m = self.dm[..., 0:1], self.dm[..., 1:2]
        return (d * q + m).reshape(n, half * 2)


def _load_locked() -> bool:
    global _fn
    if _build.native_disabled():
        return False
    if not _REQUIRED_CPU <= _build.cpu_flags():
        log.info("q4_linear: CPU lacks AVX512-BF16, decode linears read bf16 weights")
        return False
    if _build.find_compiler() is None:
        return False
    lib = _build.load_library("q4_linear", _SOURCE, _FLAGS)
    if lib is None:
        return False
    fn = lib.tf_q4_1_linear_packed
    fn.argtypes = [ctypes.c_char_p]
    fn.restype = ctypes.c_int
    _fn = fn
    return True


_load = _build.Once(_load_locked)


def _reset() -> None:
    """Forget the loaded state (tests flip the env var between cases)."""
    global _fn
    _load.reset()
    _fn = None


def available() -> bool:
    """True if the kernel can run here (CPU, compiler, build and env var allow it)."""
    return _load()


def q4_linear(
    x: torch.Tensor, weight: Q4Weight, bias: torch.Tensor | None = None
) -> torch.Tensor | None:
    """x [M, K] bf16 (M <= 8, rows contiguous) @ weight^T (+ bias): [M, N] bf16, or None when
    the kernel does not take the call (the caller then uses the bf16 weight)."""
    if _fn is None and not _load():
        return None
    n, k = weight.shape
    if (
        x.dim() != 2
        or not 0 < x.shape[0] <= MAX_M
        or x.shape[1] != k
        or x.dtype is not torch.bfloat16
        or not x.is_cpu
        or x.stride(1) != 1
        or (bias is not None and (bias.dtype is not torch.bfloat16 or not bias.is_contiguous()))
    ):
        return None
    m = x.shape[0]
    out = torch.empty((m, n), dtype=torch.bfloat16)
    args = _pack(
        x.data_ptr(), m, x.stride(0), weight.codes.data_ptr(), weight.dm.data_ptr(), n, k,
        0 if bias is None else bias.data_ptr(), out.data_ptr(), n, torch.get_num_threads(),
    )  # fmt: skip
    return out if _fn(args) == 0 else None  # type: ignore[misc]
