"""Decode linears straight from GGUF Q4_1 weights, for CPUs with AVX512-BF16 and VNNI.

A decode step reads every weight once, so its time is the weights' bytes over the memory
bandwidth. The embedded model ships as Q4_1 (per 32 weights: an fp16 scale d and minimum m,
and 32 4-bit codes q; w = d*q + m); dequantized to bf16 its layers read ~212 MB a step, kept as
codes and scales ~80 MB. The kernel (`skinny_linear.cpp`, the operator
`torch.ops.tokenfactory.skinny_linear_q4_1`) multiplies the codes with int8 activations, as
llama.cpp does on these weights (its Q4_1 x Q8_1 dot product): each row of x is rounded per
block of 32 to int8 steps of max|x| / 127, and the products are exact integer dot products
(AVX512-VNNI), scaled per block. That is ~1.5 vector operations per block where expanding the
codes to bf16 took ~10, so the step is bound by the memory reads instead of the expansion.
What it costs: the embedded model's perplexity on the shipped text is 0.6% higher with every
layer linear on this route than on the bf16 weights (docs/performance.md). Every row of a call
is computed alone: M rows give bit for bit what M one-row calls give, whatever M (up to 16
rows share each loaded block, more go in passes of 16).
The bf16 weights stay too: prompt chunks, and decode steps of more than `decode_max_rows()`
rows, run on them (a step with both runs its decodes apart: engine.runner).

`Q4Weight.from_gguf_blocks` builds the kernel's layout from a tensor's raw GGUF blocks;
`LlamaForCausalLM.attach_q4_weights` hands them to the linears.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from tokenfactory.kernels import skinny

BLOCK_BYTES = 20  # per 32 weights: fp16 d, fp16 m, 16 bytes of codes
# Decode steps (and speculative verification forwards) of up to this many rows read Q4_1; the
# bf16 weights beyond. Measured with tools/q4_decode_check.py (all 120 layer linears):
# - Without AMX (AVX512-BF16 only, e.g. AMD Zen 4), where the bf16 route is the AVX512 dot
#   products up to 8 rows and oneDNN past them: Q4_1 took 0.44x the bf16 time at 1 row,
#   0.5-0.76x at 2-8, 0.37-0.64x at 9-24, 0.79x at 32 and 0.89x at 48 on two threads of the
#   2-core EPYC VM, and 0.41-0.95x at 1-16 rows on one thread (docs/performance.md).
# - With AMX: from 3 rows the bf16 AMX tiles were as fast as the earlier Q4_1 kernel (which
#   expanded codes to bf16) on the 2-core Sapphire Rapids VM; the int8 kernel has not been
#   measured there yet, so the limit stays.
DECODE_MAX_ROWS_AMX = 2
DECODE_MAX_ROWS_AVX512 = 48


def decode_max_rows() -> int:
    """Up to how many rows (decode sequences, or verified draft tokens) a decode-step linear
    may read Q4_1 on this CPU (`reads_q4` says which row counts do); 0 where the kernel does
    not run. Decided once per process, at the first call."""
    if _max_rows < 0:
        _decide()
    return _max_rows


def reads_q4(m: int) -> bool:
    """Whether a decode-step linear of m rows reads Q4_1 here (the hot path: a set lookup)."""
    if _max_rows < 0:
        _decide()
    return m in _rows


def _decide() -> None:
    global _max_rows, _rows
    if not skinny.available():
        _max_rows, _rows = 0, frozenset()
        return
    _max_rows = DECODE_MAX_ROWS_AMX if skinny.uses_amx() else DECODE_MAX_ROWS_AVX512
    _rows = frozenset(range(1, _max_rows + 1))


_max_rows = -1  # not decided yet
_rows: frozenset[int] = frozenset()


def _reset() -> None:
    """Decide again at the next call (tests flip the kernel's availability)."""
    global _max_rows
    _max_rows = -1


GROUP_BLOCKS = 16  # blocks whose codes interleave (skinny_linear.cpp: one 32-bit lane each)


@dataclass(frozen=True)
class Q4Weight:
    """An [N, K] weight in the kernel's Q4_1 layout (skinny_linear.cpp, "Q4_1 weights against
    int8 activations"): `codes` [N, K/2] uint8, each row's blocks in groups of 16 whose code
    bytes interleave in 4-byte lanes (`interleave_codes`), and `dm` [N, 2, K/32] float32 (each
    row's d of every block, then its m, widened exactly from fp16)."""

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
        dm = blocks[:, :, :4].copy().view(np.float16).astype(np.float32)  # [N, K/32, 2]
        codes = interleave_codes(np.ascontiguousarray(blocks[:, :, 4:]))
        dm_rows = np.ascontiguousarray(dm.transpose(0, 2, 1))
        return Q4Weight(torch.from_numpy(codes), torch.from_numpy(dm_rows))

    @staticmethod
    def cat(parts: list[Q4Weight]) -> Q4Weight:
        """Rows of several weights stacked (the fused q/k/v and gate/up projections)."""
        return Q4Weight(torch.cat([p.codes for p in parts]), torch.cat([p.dm for p in parts]))

    def dequantize(self) -> torch.Tensor:
        """The float32 weight, as the GGUF loader computes it ((d * q) + m)."""
        n, half = self.codes.shape
        blocks = torch.from_numpy(deinterleave_codes(self.codes.numpy()))  # [N, K/32, 16]
        q = torch.cat((blocks & 0x0F, blocks >> 4), dim=-1).float()
        d, m = self.dm[:, 0, :, None], self.dm[:, 1, :, None]
        return (d * q + m).reshape(n, half * 2)


def interleave_codes(blocks: np.ndarray) -> np.ndarray:
    """GGUF's code bytes [N, nb, 16] -> the kernel's rows [N, nb * 16]: per whole group of 16
    blocks, 4 chunks of 16 4-byte lanes, lane b of chunk j holding bytes 4j .. 4j+3 of block b;
    the last nb % 16 blocks as they are."""
    n, nb, _ = blocks.shape
    full = nb // GROUP_BLOCKS * GROUP_BLOCKS
    groups = blocks[:, :full].reshape(n, -1, GROUP_BLOCKS, 4, 4).transpose(0, 1, 3, 2, 4)
    return np.ascontiguousarray(
        np.concatenate((groups.reshape(n, -1), blocks[:, full:].reshape(n, -1)), axis=1)
    )


def deinterleave_codes(codes: np.ndarray) -> np.ndarray:
    """The inverse of `interleave_codes`: [N, nb * 16] -> [N, nb, 16]."""
    n, row_bytes = codes.shape
    nb = row_bytes // 16
    full = nb // GROUP_BLOCKS * GROUP_BLOCKS
    groups = codes[:, : 16 * full].reshape(n, -1, 4, GROUP_BLOCKS, 4).transpose(0, 1, 3, 2, 4)
    tail = codes[:, 16 * full :].reshape(n, -1, 16)
    return np.ascontiguousarray(np.concatenate((groups.reshape(n, full, 16), tail), axis=1))


def available() -> bool:
    """True if the kernel can run here: it lives in ``skinny_linear``'s native library."""
    return skinny.available()


def q4_linear(
    x: torch.Tensor, weight: Q4Weight, bias: torch.Tensor | None = None
) -> torch.Tensor | None:
    """x [M, K] bf16 (M <= skinny.MAX_M, rows contiguous) @ weight^T (+ bias): [M, N] bf16,
    on int8 activations (see above), each row's result that of the row alone; None when the
    kernel does not take the call (the caller then uses the bf16 weight)."""
    return skinny.skinny_linear_q4_1(x, weight.codes, weight.dm, bias)
