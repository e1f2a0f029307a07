"""Decode linears straight from GGUF Q4_1 weights, for CPUs with AVX512-BF16.

A decode step reads every weight once, so its time is the weights' bytes over the memory
bandwidth. The embedded model ships as Q4_1 (per 32 weights: an fp16 scale d and minimum m,
and 32 4-bit codes q; w = d*q + m); dequantized to bf16 its layers read ~212 MB a step, kept as
codes and scales ~80 MB. The kernel (`skinny_linear.cpp`, the operator
`torch.ops.tokenfactory.skinny_linear_q4_1`, a Q4_1 variant of its AVX512 tile)
expands each block in registers exactly as the loader dequantizes it and then does what the
bf16 tile does, so `q4_linear` returns bit for bit what `skinny_linear` returns on the
dequantized weight on its AVX512 path (its path for one row; from two rows it takes AMX tiles
where the CPU has them, and oneDNN past 8 rows where it has not, which round a few sums
differently). Every row of a call is computed alone: M rows give bit for bit what M one-row
calls give, whatever M (up to 16 rows share each expanded block, more go in passes of 16).
The bf16 weights stay too: prompt and mixed steps, and decode steps of more than
`decode_max_rows()` rows, run on them.

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
# bf16 weights beyond. Expanding codes costs compute that hides behind the memory reads only
# while the dot products are cheap, so the limit depends on what the bf16 route has:
# - With AMX: from 3 rows the bf16 AMX tiles were as fast on the 2-core Sapphire Rapids VM
#   (tools/q4_decode_check.py), and AMX tiles expanded from codes (tried) no faster.
# - Without AMX (AVX512-BF16 only, e.g. AMD Zen 4): the bf16 route is the same AVX512 dot
#   products up to 8 rows and oneDNN past them; Q4_1 was faster at every row count up to 24
#   and even at 32 on the 2-core EPYC VM (0.56x the bf16 time at 1 row, 0.6-0.9x at 3-8,
#   ~0.5-0.7x at 9-16, 0.98x at 32, 1.1x at 48), see docs/performance.md.
DECODE_MAX_ROWS_AMX = 2
DECODE_MAX_ROWS_AVX512 = 32
# Except, on one thread without AMX, 5-8 rows: there the Q4_1 path is bound by the dot products
# and the bf16 AVX512 kernel (the same results, bit for bit) by the memory reads, and bf16 was
# faster (1.05-1.4x the Q4_1 time on one thread; 0.83-0.92x on two).
BF16_ROWS_ONE_THREAD = range(5, 9)


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
    amx = skinny.uses_amx()
    _max_rows = DECODE_MAX_ROWS_AMX if amx else DECODE_MAX_ROWS_AVX512
    rows = set(range(1, _max_rows + 1))
    if not amx and torch.get_num_threads() < 2:
        rows -= set(BF16_ROWS_ONE_THREAD)
    _rows = frozenset(rows)


_max_rows = -1  # not decided yet
_rows: frozenset[int] = frozenset()


def _reset() -> None:
    """Decide again at the next call (tests flip the kernel's availability)."""
    global _max_rows
    _max_rows = -1


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


def available() -> bool:
    """True if the kernel can run here: it lives in ``skinny_linear``'s native library."""
    return skinny.available()


def q4_linear(
    x: torch.Tensor, weight: Q4Weight, bias: torch.Tensor | None = None
) -> torch.Tensor | None:
    """x [M, K] bf16 (M <= skinny.MAX_M, rows contiguous) @ weight^T (+ bias): [M, N] bf16,
    each row bit for bit ``skinny_linear``'s AVX512 path on the dequantized weight for that
    row alone; None when the kernel does not take the call (the caller then uses the bf16
    weight)."""
    return skinny.skinny_linear_q4_1(x, weight.codes, weight.dm, bias)
