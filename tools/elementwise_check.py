"""The decode path's elementwise ops, native kernel against PyTorch, at several row counts.

Times the residual-add + RMSNorm (`kernels.fused_ops.add_rms_norm`, forced onto the native
kernel at every row count) against the three PyTorch ops it replaces, and the SiLU gate as the
model runs it (PyTorch), on SmolLM2-135M's widths (hidden 576, intermediate 1536), bf16, with
the engine's thread count. Medians of five batches of calls, in microseconds.

    .venv/bin/python tools/elementwise_check.py
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from tokenfactory.kernels import fused_ops
from tokenfactory.models.llama import silu_mul

HIDDEN, INTERMEDIATE = 576, 1536
ROWS = (1, 4, 8, 16, 32, 64, 256)


def median_us(fn: Callable[[], object], calls: int = 400) -> float:
    for _ in range(20):
        fn()
    per_batch = []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(calls // 5):
            fn()
        per_batch.append((time.perf_counter() - t) / (calls // 5) * 1e6)
    return sorted(per_batch)[2]


def main() -> None:
    torch.set_grad_enabled(False)
    native = fused_ops._load()
    fused_ops.MAX_NORM_ROWS = max(ROWS)  # time the kernel itself, past the cut-over too
    weight = torch.randn(HIDDEN).bfloat16()
    print(f"native kernel loaded: {native}; torch threads: {torch.get_num_threads()}")
    print(f"{'rows':>5} {'norm native':>12} {'norm torch':>11} {'silu torch':>11}")
    for rows in ROWS:
        norm_native, norm_torch, silu = row_times(rows, weight)
        print(f"{rows:>5} {norm_native:>12.1f} {norm_torch:>11.1f} {silu:>11.1f}")


def row_times(rows: int, weight: torch.Tensor) -> tuple[float, float, float]:
    """(native add+RMSNorm, PyTorch add+RMSNorm, SiLU gate) microseconds at `rows` rows."""
    x = torch.randn(rows, HIDDEN).bfloat16()
    res = torch.randn(rows, HIDDEN).bfloat16()
    gate_up = torch.randn(rows, 2 * INTERMEDIATE).bfloat16()

    def torch_norm() -> object:
        new_res = x + res
        return F.rms_norm(new_res, (HIDDEN,), weight, 1e-5), new_res

    return (
        median_us(lambda: fused_ops.add_rms_norm(x, res.clone(), weight, 1e-5)),
        median_us(torch_norm),
        median_us(lambda: silu_mul(gate_up)),
    )


if __name__ == "__main__":
    main()
