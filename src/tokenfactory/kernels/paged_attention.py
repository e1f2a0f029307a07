"""Decode attention straight off the paged KV cache, for CPUs with AVX512F.

``TorchAttention._decode`` (engine/attention_backends.py) gathers every sequence's blocks into
a padded copy ([D, max_blocks * block_size, kv_heads, head_dim]) and runs masked SDPA over
it; at decode the copy is most of the cost. ``paged_decode_attention`` reads the K/V rows in
place through the block table instead (the operator
``torch.ops.tokenfactory.paged_decode_attention``, ``paged_attention.cpp``: fp32 math, online
softmax, all query heads of a kv group per pass over its rows, OpenMP over (sequence, kv head)
pairs). It returns ``None`` wherever it does not run, and the caller keeps its torch path.

Run ``python -m tokenfactory.kernels.paged_attention`` for a timing table against the torch
path.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import torch

from tokenfactory.kernels import _build, native

log = logging.getLogger(__name__)

_REQUIRED_CPU = frozenset({"avx512f"})
MAX_GROUP = 16  # query heads per kv head (kernel's MAX_G)
MAX_HEAD_DIM = 256  # and head_dim must be a multiple of 16

_DTYPES = (torch.bfloat16, torch.float32)

# The operators (OpOverloads) once loaded: a fresh result, or into a given tensor.
_fn: Any = None
_out_fn: Any = None


def _load_locked() -> bool:
    global _fn, _out_fn
    if _build.native_disabled():
        return False
    if not _REQUIRED_CPU <= _build.cpu_flags():
        log.info("paged_attention: CPU lacks AVX512F, using the torch path")
        return False
    if not native.load():
        return False
    ops = torch.ops.tokenfactory
    _fn, _out_fn = ops.paged_decode_attention.default, ops.paged_decode_attention_out.default
    return True


_load = _build.Once(_load_locked)


def _reset() -> None:
    """Forget the loaded state (tests flip the env var between cases)."""
    global _fn, _out_fn
    _load.reset()
    _fn = _out_fn = None


def available() -> bool:
    """True if the native kernel is usable here (CPU, compiler, build and env var allow it).

    Decided once per process, at the first call (which is also when the library gets built,
    about 10 s the first time on a machine).
    """
    return _load()


def paged_decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor | None:
    """Single-token decode attention over a paged cache; ``None`` if the kernel cannot run.

    q: [D, heads, head_dim], bf16 or fp32, any strides as long as head_dim is contiguous.
    k_cache, v_cache: [num_blocks, block_size, kv_heads, head_dim], contiguous, both bf16 or
    both fp32 (may differ from q's dtype). block_tables: [D, max_blocks] int64 (rows padded
    with any value; entries past a sequence's last block are never read). context_lens: [D]
    int64, keys per sequence including the current token (already written to the cache); a
    length of 0 gives a zero output row. GQA: query head h reads kv head
    h // (heads // kv_heads). scale: None means 1 / sqrt(head_dim). out: optional [D, heads,
    head_dim] destination in q's dtype with contiguous head_dim.

    Returns the output (``out`` if given) in q's dtype, or ``None`` (nothing written) when the
    kernel does not apply: native code unavailable or disabled (TOKENFACTORY_NO_NATIVE=1),
    non-CPU tensors, other dtypes, head_dim not a multiple of 16 or above 256, more than 16
    query heads per kv head, or autograd on q. Raises ``ValueError`` for inconsistent shapes
    and for context lengths or block ids out of range.
    """
    if _fn is None and not _load():
        return None
    if (
        q.dtype not in _DTYPES
        or k_cache.dtype not in _DTYPES
        or v_cache.dtype is not k_cache.dtype
        or not (q.is_cpu and k_cache.is_cpu and v_cache.is_cpu)
        or not (block_tables.is_cpu and context_lens.is_cpu)
        or (q.requires_grad and torch.is_grad_enabled())
    ):
        return None
    if q.dim() != 3 or k_cache.dim() != 4 or block_tables.dim() != 2 or context_lens.dim() != 1:
        raise ValueError("expected q [D, H, Dh], caches [N, B, KVH, Dh], tables [D, M], lens [D]")
    d, heads, head_dim = q.shape
    num_blocks, block_size, kv_heads, hd = k_cache.shape
    if (
        hd != head_dim
        or v_cache.shape != k_cache.shape
        or heads % kv_heads
        or block_tables.shape[0] != d
        or context_lens.shape[0] != d
    ):
        raise ValueError(
            f"shape mismatch: q {tuple(q.shape)}, k_cache {tuple(k_cache.shape)}, v_cache "
            f"{tuple(v_cache.shape)}, block_tables {tuple(block_tables.shape)}, context_lens "
            f"{tuple(context_lens.shape)}"
        )
    if (
        head_dim % 16
        or head_dim > MAX_HEAD_DIM
        or heads // kv_heads > MAX_GROUP
        or (d and q.stride(2) != 1)
        or not (k_cache.is_contiguous() and v_cache.is_contiguous())
    ):
        return None
    if block_tables.dtype is not torch.int64 or block_tables.stride(1) != 1:
        block_tables = block_tables.to(torch.int64).contiguous()
    if context_lens.dtype is not torch.int64 or not context_lens.is_contiguous():
        context_lens = context_lens.to(torch.int64).contiguous()
    if scale is None:
        scale = 1.0 / math.sqrt(head_dim)
    if out is not None and (
        out.dtype is not q.dtype
        or not out.is_cpu
        or out.shape != q.shape
        or (d and out.stride(2) != 1)
    ):
        raise ValueError("out must be a CPU [D, heads, head_dim] tensor in q's dtype")
    try:  # ValueError (bad lengths or block ids) goes to the caller, as documented
        if out is None:
            return _fn(q, k_cache, v_cache, block_tables, context_lens, float(scale))
        _out_fn(q, k_cache, v_cache, block_tables, context_lens, float(scale), out)
        return out
    except RuntimeError as e:  # a case the checks above missed: the caller's torch path
        log.warning("paged_decode_attention not taken: %s", e)
        return None


# --------------------------------------------------------------------------------------------
# Benchmark: python -m tokenfactory.kernels.paged_attention


def _torch_decode(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    mask: torch.Tensor,
    scale: float | None,
) -> torch.Tensor:
    """The torch path, as in TorchAttention._decode (gather + masked SDPA)."""
    import torch.nn.functional as F

    d = block_tables.shape[0]
    kv_heads, head_dim = k_cache.shape[2], k_cache.shape[3]
    idx = block_tables.reshape(-1)
    keys = k_cache.index_select(0, idx).view(d, -1, kv_heads, head_dim).transpose(1, 2)
    values = v_cache.index_select(0, idx).view(d, -1, kv_heads, head_dim).transpose(1, 2)
    out = F.scaled_dot_product_attention(
        q.unsqueeze(2), keys, values, attn_mask=mask, scale=scale, enable_gqa=True
    )
    return out.squeeze(2)


def _median_time(fn: Callable[[], object], min_time: float = 0.3, max_reps: int = 200) -> float:
    import time

    fn()  # warm-up
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max_reps and (len(times) < 5 or time.perf_counter() - start < min_time):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


def benchmark(
    batches: tuple[int, ...] = (1, 16, 64, 256),
    contexts: tuple[int, ...] = (128, 512, 2048),
    heads: int = 9,
    kv_heads: int = 3,
    head_dim: int = 64,
    block_size: int = 16,
    dtype: torch.dtype = torch.bfloat16,
    threads: int = 2,
) -> None:
    """Print kernel vs torch-path median times (SmolLM2-135M attention shapes by default)."""
    torch.set_num_threads(threads)
    if not available():
        print("native paged attention unavailable")
        return
    gen = torch.Generator().manual_seed(0)
    print(
        f"heads={heads} kv_heads={kv_heads} head_dim={head_dim} block_size={block_size} "
        f"dtype={dtype} threads={threads}"
    )
    print(f"{'D':>5} {'ctx':>6} {'torch us':>10} {'kernel us':>10} {'speedup':>8} {'max err':>9}")
    for d in batches:
        for ctx in contexts:
            max_blocks = -(-ctx // block_size)
            num_blocks = d * max_blocks + 1
            shape = (num_blocks, block_size, kv_heads, head_dim)
            k_cache = torch.randn(shape, generator=gen).to(dtype)
            v_cache = torch.randn(shape, generator=gen).to(dtype)
            # each sequence owns scattered blocks, like a long-running cache
            block_tables = torch.randperm(num_blocks - 1, generator=gen)[: d * max_blocks]
            block_tables = (block_tables + 1).view(d, max_blocks)
            context_lens = torch.full((d,), ctx, dtype=torch.int64)
            mask = torch.arange(max_blocks * block_size) < context_lens[:, None]
            mask = mask.view(d, 1, 1, -1)
            q = torch.randn((d, heads, head_dim), generator=gen).to(dtype)
            out = torch.empty_like(q)

            def ref(
                q: torch.Tensor = q,
                k: torch.Tensor = k_cache,
                v: torch.Tensor = v_cache,
                bt: torch.Tensor = block_tables,
                m: torch.Tensor = mask,
            ) -> torch.Tensor:
                return _torch_decode(q, k, v, bt, m, None)

            def nat(
                q: torch.Tensor = q,
                k: torch.Tensor = k_cache,
                v: torch.Tensor = v_cache,
                bt: torch.Tensor = block_tables,
                cl: torch.Tensor = context_lens,
                o: torch.Tensor = out,
            ) -> torch.Tensor | None:
                return paged_decode_attention(q, k, v, bt, cl, None, o)

            with torch.inference_mode():
                err = (nat().float() - ref().float()).abs().max().item()  # type: ignore[union-attr]
                t_ref, t_nat = _median_time(ref), _median_time(nat)
            print(
                f"{d:>5} {ctx:>6} {t_ref * 1e6:>10.1f} {t_nat * 1e6:>10.1f} "
                f"{t_ref / t_nat:>7.2f}x {err:>9.2e}"
            )


if __name__ == "__main__":
    benchmark()
