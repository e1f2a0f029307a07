"""bf16 linear for decode-sized batches (M = 1..256 rows) on x86 CPUs with AVX512-BF16.

``F.linear`` goes through oneDNN, which for a handful of rows spends more time in setup and
reaches well under the machine's memory bandwidth. Decode linears are pure weight streaming,
so a small native kernel (``skinny_linear.c``) that reads every weight byte once, at full
bandwidth, wins ~2-3x. Batched decode (M = 9..256 sequences per step) runs an AMX kernel
that tiles M in 16-row tiles and streams each weight block once for all of them; at
SmolLM-sized shapes it measured ~1.1-2.5x faster than oneDNN (see ``should_use`` for where
it is not). It runs as the operator ``torch.ops.tokenfactory.skinny_linear`` (``native``);
wherever it cannot run (no AVX512-BF16, no compiler, build failure,
``TOKENFACTORY_NO_NATIVE=1``, unsupported dtype/layout/shape) ``skinny_linear`` computes the
same thing with ``F.linear``.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F

from tokenfactory.kernels import _build, native

log = logging.getLogger(__name__)

MAX_M = 256  # rows per call the kernel handles; past it oneDNN's GEMM is as fast or faster
# Up to this many rows the AVX512 kernel can run the call; larger M needs the batched AMX
# kernel (AMX-capable CPU and build, K % 32 == 0).
_AVX_MAX_M = 8

# VNNI: the Q4_1 kernel's int8 dot products (every CPU with AVX512-BF16 has it).
_REQUIRED_CPU = frozenset({"avx512f", "avx512bw", "avx512vl", "avx512_bf16", "avx512_vnni"})
# From this many rows on, AMX tiles take over where the CPU has them: the AVX512 path does M
# dot products per weight load and turns compute bound (measured: AMX equal or faster from
# M = 2, up to 3x at M = 8; AVX512 slightly faster at M = 1).
_AMX_MIN_M = 2
# Smallest weight (N * K elements) worth a native call; below it per-call overhead dominates.
_MIN_WEIGHT_ELEMS = 8192
# Largest M * K for which the batched kernel (M > 8) beats oneDNN. Every 32-row weight block
# re-reads all of x (2 * M * K bytes, packed) from L2; past ~768 KiB that traffic is the
# bottleneck and oneDNN's cache blocking wins (measured: K = 1536 faster up to M = 256;
# K = 4096 1.3-1.4x faster at M = 64, 0.85x at M = 128, 0.7x at M = 256).
_MAX_BATCH_MK = 256 * 1536
# Whether should_use picks the batched kernel (M > 8) by default: prompts and mixed steps too,
# not only decode steps. It is as exact as oneDNN (both ~99.99% correctly rounded; they round a
# few elements differently) and much faster at these sizes: on the 2-core VM a step with 4
# decodes and a 16-token prompt chunk took 38 ms instead of 71 ms on the embedded model.
BATCHED = True

_BF16 = torch.bfloat16

# The operators (OpOverloads), kept as module globals so the hot path is a couple of global
# reads; None until loaded.
_fn: Any = None
_out_fn: Any = None
_q4_fn: Any = None
_q8_fn: Any = None
_amx_min_m = MAX_M + 1  # MAX_M + 1 disables AMX


def _load_locked() -> bool:
    global _fn, _out_fn, _q4_fn, _q8_fn, _amx_min_m
    if _build.native_disabled():
        return False
    if not _REQUIRED_CPU <= _build.cpu_flags():
        log.info("skinny_linear: CPU lacks AVX512-BF16 or VNNI, using F.linear")
        return False
    if not native.load():
        return False
    ops = torch.ops.tokenfactory
    _fn, _out_fn = ops.skinny_linear.default, ops.skinny_linear_out.default
    _q4_fn = ops.skinny_linear_q4_1.default
    _q8_fn = ops.skinny_linear_q8_0.default
    _amx_min_m = _AMX_MIN_M if native.amx() else MAX_M + 1
    return True


_load = _build.Once(_load_locked)


def _reset() -> None:
    """Forget the loaded state (tests flip the env var / availability between cases)."""
    global _fn, _out_fn, _q4_fn, _q8_fn, _amx_min_m
    _load.reset()
    _fn, _out_fn, _q4_fn, _q8_fn, _amx_min_m = None, None, None, None, MAX_M + 1


def available() -> bool:
    """True if the native kernel is usable here (CPU, compiler, build, env var all allow it).

    Decided once per process, at the first call of anything here (that is also when the
    library gets built, ~10 s the first time on a machine): setting TOKENFACTORY_NO_NATIVE
    later has no effect.
    """
    return _load()


def uses_amx() -> bool:
    """True if batches of ``_AMX_MIN_M`` rows or more run on AMX tiles (CPU and build allow)."""
    return available() and _amx_min_m <= MAX_M


def should_use(m: int, n: int, k: int, batched: bool | None = None) -> bool:
    """Whether ``skinny_linear`` beats ``F.linear`` for an [m, k] x [n, k]^T product.

    Measured faster for every M in 1..8 from 16 x 576 up to 28672 x 4096 weights, and for
    M = 9..256 (AMX only, K % 32 == 0) while M * K <= ``_MAX_BATCH_MK`` (used only with
    ``batched``, default ``BATCHED``, set). Below
    ``_MIN_WEIGHT_ELEMS`` weights both take a few microseconds of call overhead and oneDNN's
    is the smaller one.
    """
    if not (1 <= m <= MAX_M and n * k >= _MIN_WEIGHT_ELEMS and available()):
        return False
    if m <= _AVX_MAX_M:
        return True
    if batched is None:
        batched = BATCHED
    return batched and m >= _amx_min_m and k % 32 == 0 and m * k <= _MAX_BATCH_MK


def _fallback(
    x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, out: torch.Tensor | None
) -> torch.Tensor:
    y = F.linear(x, w, bias)
    if out is None:
        return y
    out.copy_(y)
    return out


def skinny_linear(
    x: torch.Tensor,
    w: torch.Tensor,
    bias: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """``F.linear(x, w, bias)`` for bf16 CPU tensors, via the native kernel when it applies.

    x: [M, K] (or [K], or [..., K] with M rows in all), rows contiguous; w: [N, K] contiguous;
    bias: [N] or None; out: optional [M, N] destination with contiguous rows, not overlapping
    x (reusing one per layer saves the ~1-2 us allocation per call). Accumulates in
    fp32 and rounds to bf16 once. Anything the kernel does not take (other dtypes or devices,
    M > MAX_M, M > 8 without AMX or with K % 32 != 0, strided weights, autograd) is computed
    by ``F.linear`` instead. Callers choosing per shape should ask ``should_use`` first.
    """
    if _fn is None and not _load():
        return _fallback(x, w, bias, out)
    if w.dim() != 2:
        return _fallback(x, w, bias, out)
    if x.dim() != 2:
        return _reshaped(x, w, bias, out)
    m, k = x.shape
    n, kw = w.shape
    sx1 = x.stride(1)
    grad = torch.is_grad_enabled()
    if (
        not 0 < m <= MAX_M
        or (m > _AVX_MAX_M and (m < _amx_min_m or k % 32))
        or k != kw
        or k == 0
        or n == 0
        or sx1 != 1
        or x.dtype is not _BF16
        or w.dtype is not _BF16
        or not x.is_cpu
        or not w.is_cpu
        or not w.is_contiguous()
        or (grad and (x.requires_grad or w.requires_grad))
    ):
        return _fallback(x, w, bias, out)
    if bias is not None and (
        bias.dtype is not _BF16
        or not bias.is_cpu
        or bias.shape != (n,)
        or not bias.is_contiguous()
        or (grad and bias.requires_grad)
    ):
        return _fallback(x, w, bias, out)
    try:
        if out is None:
            return _fn(x, w, bias, m >= _amx_min_m)
        if out.dtype is not _BF16 or not out.is_cpu or out.shape != (m, n) or out.stride(1) != 1:
            return _fallback(x, w, bias, out)
        _out_fn(x, w, bias, m >= _amx_min_m, out)
        return out
    except RuntimeError as e:  # a case the checks above missed: never fail the caller
        log.warning("skinny_linear fell back to F.linear: %s", e)
        return _fallback(x, w, bias, out)


def _quantized_call_ok(
    x: torch.Tensor, n: int, k: int, bias: torch.Tensor | None
) -> bool:
    """What the Q4_1 and Q8_0 kernels ask of the activations and bias, for an [N, K] weight
    stored in blocks of 32: x [M, K] bf16 on the CPU, rows contiguous, 0 < M <= MAX_M."""
    return not (
        x.dim() != 2
        or not 0 < x.shape[0] <= MAX_M
        or x.shape[1] != k
        or k % 32
        or x.dtype is not _BF16
        or not x.is_cpu
        or x.stride(1) != 1
        or (
            bias is not None
            and (bias.dtype is not _BF16 or bias.shape != (n,) or not bias.is_contiguous())
        )
    )


def skinny_linear_q4_1(
    x: torch.Tensor,
    codes: torch.Tensor,
    dm: torch.Tensor,
    bias: torch.Tensor | None = None,
) -> torch.Tensor | None:
    """``x @ W.T (+ bias)`` with W as Q4_1 codes and scales (layout: ``kernels.q4_linear``):
    x [M, K] bf16 with rows contiguous, M <= MAX_M; codes [N, K/2] uint8 and dm [N, 2, K/32]
    float32, contiguous. x is rounded to int8 per block of 32 (llama.cpp's Q8_1), so the
    result is close to, not equal to, the product on bf16 weights; each row of it depends on
    that row alone, whatever M. None when the native kernel does not take the call."""
    if _q4_fn is None and not _load():
        return None
    n, half = codes.shape
    k = 2 * half
    if (
        not _quantized_call_ok(x, n, k, bias)
        or codes.dtype is not torch.uint8
        or dm.dtype is not torch.float32
        or dm.shape != (n, 2, k // 32)
        or not (codes.is_contiguous() and dm.is_contiguous())
    ):
        return None
    try:
        return _q4_fn(x, codes, dm, bias)
    except RuntimeError as e:  # a case the checks above missed: the caller uses bf16
        log.warning("skinny_linear_q4_1 not taken: %s", e)
        return None


def skinny_linear_q8_0(
    x: torch.Tensor,
    codes: torch.Tensor,
    d: torch.Tensor,
    bias: torch.Tensor | None = None,
) -> torch.Tensor | None:
    """``x @ W.T (+ bias)`` with W as Q8_0 codes and scales (layout: ``kernels.q8_linear``):
    x [M, K] bf16 with rows contiguous, M <= MAX_M; codes [N, K] int8 and d [N, K/32] float32,
    contiguous. Each row of the result is bit for bit ``skinny_linear``'s AVX512 path on the
    dequantized bf16 weight for that row alone, whatever M. None when the native kernel does
    not take the call."""
    if _q8_fn is None and not _load():
        return None
    n, k = codes.shape
    if (
        not _quantized_call_ok(x, n, k, bias)
        or codes.dtype is not torch.int8
        or d.dtype is not torch.float32
        or d.shape != (n, k // 32)
        or not (codes.is_contiguous() and d.is_contiguous())
    ):
        return None
    try:
        return _q8_fn(x, codes, d, bias)
    except RuntimeError as e:  # a case the checks above missed: the caller uses bf16
        log.warning("skinny_linear_q8_0 not taken: %s", e)
        return None


def _reshaped(
    x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, out: torch.Tensor | None
) -> torch.Tensor:
    if x.dim() == 0:
        return _fallback(x, w, bias, out)
    x2 = x.reshape(-1, x.shape[-1])
    out2 = None
    if out is not None:
        if not out.is_contiguous():
            return _fallback(x, w, bias, out)
        out2 = out.view(-1, out.shape[-1])
    y = skinny_linear(x2, w, bias, out2)
    return out if out is not None else y.view(*x.shape[:-1], w.shape[0])
