"""FP8 linears: weights stored as float8_e4m3fn, one scale per output channel.

At load each [N, K] weight w becomes codes q = round(w / s) in float8_e4m3fn with
s[n] = max|w[n, :]| / 448 (448 is e4m3's largest finite value), so every row uses the whole
e4m3 range: one byte a weight instead of bf16's two, which is what a memory-bound decode step
reads. At run time each activation row is quantized the same way with its own scale (dynamic,
per token), and `torch._scaled_mm` multiplies the two e4m3 operands with float32 accumulation
and applies both scales to the output, in the model's dtype.

Every step is a tensor op on the device with shapes fixed by the input's shape: no host
synchronisation and no data-dependent shape, so the CUDA decode graphs capture it as they
capture a bf16 matmul. `torch._scaled_mm` runs on CPUs (the same code path, tested here) and
on CUDA GPUs of compute capability 8.9 or newer (Ada, Hopper and later), where e4m3 matmuls
exist in hardware; `check_supported` refuses anything else with the requirement in words.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

FP8 = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8).max)  # 448
MIN_CUDA_CAPABILITY = (8, 9)
# A row of zeros still needs a positive scale (its codes are all zero whatever it is).
_MIN_SCALE = 1e-12


class Fp8UnsupportedError(ValueError):
    """FP8 matmuls cannot run on this device, dtype or shape (the message says why)."""


@dataclass(frozen=True)
class Fp8Weight:
    """An [N, K] weight as e4m3 codes [N, K] and float32 scales [1, N] (w ~ codes * scale,
    row by row); `codes_t` is the codes' transposed view, the column-major operand
    `torch._scaled_mm` wants."""

    codes: torch.Tensor
    scale: torch.Tensor

    @property
    def shape(self) -> tuple[int, int]:
        return self.codes.shape[0], self.codes.shape[1]

    @property
    def codes_t(self) -> torch.Tensor:
        return self.codes.t()

    @property
    def nbytes(self) -> int:
        return self.codes.numel() * self.codes.element_size() + self.scale.numel() * 4

    @staticmethod
    def quantize(weight: torch.Tensor) -> Fp8Weight:
        """Per-output-channel absmax quantization of a [N, K] weight (any float dtype)."""
        if weight.dim() != 2:
            raise ValueError(f"an FP8 weight is a matrix, got shape {tuple(weight.shape)}")
        w = weight.detach().float()
        scale = (w.abs().amax(dim=1) / FP8_MAX).clamp(min=_MIN_SCALE)
        codes = (w / scale[:, None]).to(FP8).contiguous()
        return Fp8Weight(codes, scale.reshape(1, -1).contiguous())

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The weight the codes stand for (codes * scale), for tests and references."""
        return (self.codes.float() * self.scale.reshape(-1, 1)).to(dtype)


def quantize_rows_torch(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Dynamic per-token quantization of activations [M, K]: (e4m3 codes [M, K], float32
    scales [M, 1]), each row scaled by its own absmax / 448."""
    amax = torch.linalg.vector_norm(x, ord=float("inf"), dim=-1, keepdim=True, dtype=torch.float32)
    scale = amax.clamp(min=_MIN_SCALE) / FP8_MAX
    return (x / scale).to(FP8), scale


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`quantize_rows_torch`'s result; on CUDA in one Triton launch where Triton imports
    (kernels.triton_fp8: a decode step has four linears per layer, each paying it)."""
    if x.is_cuda and x.stride(-1) == 1:
        from tokenfactory.kernels import triton_fp8  # only CUDA tensors load Triton

        if triton_fp8.available():
            return triton_fp8.quantize_rows(x)
    return quantize_rows_torch(x)


def fp8_linear(
    x: torch.Tensor, weight: Fp8Weight, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """x [..., K] @ weight^T (+ bias) in x's dtype, both operands in e4m3 with their scales."""
    lead = x.shape[:-1]
    rows = x.reshape(-1, x.shape[-1])
    codes, scale = quantize_rows(rows)
    y = torch._scaled_mm(
        codes, weight.codes_t, scale_a=scale, scale_b=weight.scale, out_dtype=x.dtype
    )
    if bias is not None:  # added outside: not every scaled-matmul kernel takes a bias
        y = y + bias
    return y.reshape(*lead, weight.shape[0])


def check_supported(device: torch.device, dtype: torch.dtype) -> None:
    """Raise Fp8UnsupportedError unless FP8 matmuls with per-row scales run on `device`
    with `dtype` outputs: tried once on a small product, so a PyTorch build that lacks the
    kernel is refused at load rather than at the first request."""
    if dtype not in (torch.bfloat16, torch.float32) or (
        device.type == "cuda" and dtype is not torch.bfloat16
    ):
        raise Fp8UnsupportedError(
            f"FP8 weights need bfloat16 activations (float32 also on CPU), not {dtype}; "
            "use --dtype bfloat16"
        )
    if device.type == "cuda":
        cap = torch.cuda.get_device_capability(device)
        if cap < MIN_CUDA_CAPABILITY:
            name = torch.cuda.get_device_name(device)
            raise Fp8UnsupportedError(
                f"FP8 weights need a GPU of compute capability 8.9 or newer (Ada, Hopper or "
                f"later); {name} has {cap[0]}.{cap[1]}"
            )
    elif device.type != "cpu":
        raise Fp8UnsupportedError(f"FP8 weights run on CPU or CUDA, not {device.type}")
    probe = Fp8Weight.quantize(torch.ones(16, 32, device=device))
    try:
        fp8_linear(torch.ones(2, 32, device=device, dtype=dtype), probe)
    except (RuntimeError, NotImplementedError) as exc:
        raise Fp8UnsupportedError(
            f"this PyTorch build ({torch.__version__}) cannot run FP8 matmuls with per-row "
            f"scales on {device}: {exc}"
        ) from None


def check_shape(n: int, k: int, device: torch.device) -> None:
    """CUDA's FP8 kernels need both matrix sides in multiples of 16."""
    if device.type == "cuda" and (n % 16 or k % 16):
        raise Fp8UnsupportedError(
            f"FP8 weights on CUDA need dimensions in multiples of 16, got [{n}, {k}]"
        )
