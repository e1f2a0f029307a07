"""Per-token FP8 quantization of activations in one Triton launch, for the CUDA path.

The PyTorch form (`fp8_linear.quantize_rows_torch`) is four or five kernels per linear: the
row maxima, the scales, the division and the cast. In a single-user decode step, where a
matmul on FP8 weights takes a few microseconds, that many launches would eat much of what the
halved weight bytes save. Here one program per row finds the row's absmax, writes its scale
and the e4m3 codes of x / scale: the same values as the PyTorch form (float32 division, then
one round to nearest e4m3). Optional like the other Triton kernels: only CUDA tensors come
here, and tests run it in Triton's interpreter on CPU.
"""

from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover
    triton = None
    tl = None

FP8_MAX = 448.0
MIN_SCALE = 1e-12
BLOCK = 1024


def available() -> bool:
    return triton is not None


if triton is not None:

    @triton.jit
    def _quantize_rows_kernel(
        x_ptr, q_ptr, s_ptr, n, stride_x, stride_q, FP8_MAX: tl.constexpr,
        MIN_SCALE: tl.constexpr, BLOCK: tl.constexpr,
    ):  # fmt: skip
        row = tl.program_id(0).to(tl.int64)
        offs = tl.arange(0, BLOCK)
        amax = tl.zeros([BLOCK], dtype=tl.float32)
        for start in range(0, n, BLOCK):
            mask = start + offs < n
            v = tl.load(x_ptr + row * stride_x + start + offs, mask=mask, other=0.0)
            amax = tl.maximum(amax, tl.abs(v.to(tl.float32)))
        scale = tl.math.div_rn(tl.maximum(tl.max(amax, 0), MIN_SCALE), FP8_MAX)
        tl.store(s_ptr + row, scale)
        for start in range(0, n, BLOCK):
            mask = start + offs < n
            v = tl.load(x_ptr + row * stride_x + start + offs, mask=mask, other=0.0)
            q = tl.math.div_rn(v.to(tl.float32), scale)  # IEEE division, as torch's
            tl.store(q_ptr + row * stride_q + start + offs, q.to(q_ptr.dtype.element_ty), mask=mask)


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] (last dimension contiguous) -> (e4m3 codes [M, K], float32 scales [M, 1])."""
    assert triton is not None
    m, k = x.shape
    codes = torch.empty((m, k), dtype=torch.float8_e4m3fn, device=x.device)
    scale = torch.empty((m, 1), dtype=torch.float32, device=x.device)
    if m:
        _quantize_rows_kernel[(m,)](
            x, codes, scale, k, x.stride(0), codes.stride(0),
            FP8_MAX=FP8_MAX, MIN_SCALE=MIN_SCALE, BLOCK=BLOCK,
        )  # fmt: skip
    return codes, scale
