"""Triton versions of the small per-layer ops for the GPU path, one launch each:

- `add_rms_norm`: residual add + RMSNorm (the residual is updated in place).
- `silu_mul`: silu(gate) * up from the fused gate_up projection.
- `rope_`: rotary embedding of q and k together, in place, reading the cos/sin tables by
  position (no per-step [T, head_dim] tables).

They compute in float32 and round once, where the PyTorch ops they replace round bf16
intermediates; results agree within bf16 tolerance (tests compare them). Optional like the
attention kernels: only the GPU path imports this module.
"""

from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover
    triton = None
    tl = None


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


if triton is not None:

    @triton.jit
    def _add_rms_norm_kernel(
        x_ptr,
        res_ptr,
        w_ptr,
        out_ptr,
        stride_x,
        stride_r,
        stride_o,
        n,
        eps,
        HAS_RESIDUAL: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        row = tl.program_id(0).to(tl.int64)
        offs = tl.arange(0, BLOCK)
        mask = offs < n
        x = tl.load(x_ptr + row * stride_x + offs, mask=mask, other=0.0).to(tl.float32)
        if HAS_RESIDUAL:
            r = tl.load(res_ptr + row * stride_r + offs, mask=mask, other=0.0).to(tl.float32)
            x = x + r
        # The residual stream is kept in the activation dtype, as in the unfused ops.
        xr = x.to(res_ptr.dtype.element_ty)
        tl.store(res_ptr + row * stride_r + offs, xr, mask=mask)
        xf = xr.to(tl.float32)
        var = tl.sum(xf * xf, 0) / n
        w = tl.load(w_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        y = xf * tl.rsqrt(var + eps) * w
        tl.store(out_ptr + row * stride_o + offs, y.to(out_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _silu_mul_kernel(x_ptr, out_ptr, stride_x, stride_o, n, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        g = tl.load(x_ptr + row * stride_x + offs, mask=mask, other=0.0).to(tl.float32)
        u = tl.load(x_ptr + row * stride_x + n + offs, mask=mask, other=0.0).to(tl.float32)
        y = g / (1.0 + tl.exp(-g)) * u
        tl.store(out_ptr + row * stride_o + offs, y.to(out_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _rope_kernel(
        x_ptr,
        pos_ptr,
        cos_ptr,
        sin_ptr,
        stride_t,
        stride_h,
        num_heads,
        HALF: tl.constexpr,
        HEADS_PAD: tl.constexpr,
    ):
        t = tl.program_id(0).to(tl.int64)
        pos = tl.load(pos_ptr + t).to(tl.int64)
        i = tl.arange(0, HALF)
        h = tl.arange(0, HEADS_PAD)
        hmask = h < num_heads
        cos = tl.load(cos_ptr + pos * HALF + i)
        sin = tl.load(sin_ptr + pos * HALF + i)
        base = x_ptr + t * stride_t + h[:, None] * stride_h + i[None, :]
        x1 = tl.load(base, mask=hmask[:, None], other=0.0).to(tl.float32)
        x2 = tl.load(base + HALF, mask=hmask[:, None], other=0.0).to(tl.float32)
        o1 = x1 * cos[None, :] - x2 * sin[None, :]
        o2 = x2 * cos[None, :] + x1 * sin[None, :]
        tl.store(base, o1.to(x_ptr.dtype.element_ty), mask=hmask[:, None])
        tl.store(base + HALF, o2.to(x_ptr.dtype.element_ty), mask=hmask[:, None])


def add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(rms_norm(x + residual) * weight, x + residual); the residual is updated in place
    (without one, a new residual stream starts as a copy of x)."""
    m, n = x.shape
    has_res = residual is not None
    if residual is None:
        residual = torch.empty_like(x)  # the kernel stores x into it
    out = torch.empty_like(x)
    if m:
        block = _next_pow2(n)
        _add_rms_norm_kernel[(m,)](
            x, residual, weight, out, x.stride(0), residual.stride(0), out.stride(0), n, eps,
            HAS_RESIDUAL=has_res, BLOCK=block, num_warps=8 if block >= 4096 else 4,
        )  # fmt: skip
    return out, residual


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    m, two_n = gate_up.shape
    n = two_n // 2
    out = torch.empty((m, n), dtype=gate_up.dtype, device=gate_up.device)
    if m:
        block = min(1024, _next_pow2(n))
        _silu_mul_kernel[(m, triton.cdiv(n, block))](
            gate_up, out, gate_up.stride(0), out.stride(0), n, BLOCK=block, num_warps=4
        )
    return out


def rope_(
    x: torch.Tensor, positions: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> torch.Tensor:
    """Rotate x [T, heads, head_dim] in place (half-split convention, as `apply_rotary`);
    cos/sin are the float32 tables [max_positions, head_dim / 2]."""
    t, heads, head_dim = x.shape
    assert x.stride(2) == 1 and cos.is_contiguous() and sin.is_contiguous()
    if t:
        _rope_kernel[(t,)](
            x, positions, cos, sin, x.stride(0), x.stride(1), heads,
            HALF=head_dim // 2, HEADS_PAD=_next_pow2(heads), num_warps=4,
        )  # fmt: skip
    return x
