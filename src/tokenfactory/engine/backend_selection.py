"""Which attention backend and which small-ops backend a runner uses, from
`EngineConfig.attention_backend` and the device:

    requested   CUDA                                   CPU       other devices
    auto        triton if Triton imports, else torch   cpu       torch
    torch       torch                                  cpu       torch
    triton      triton (an error without Triton)       triton    triton

"cpu" is the torch backend with decodes on the native kernel, which falls back to the same
torch ops wherever it cannot run, so "torch" keeps it on CPU as it always did. Triton on
CPU runs only in Triton's interpreter (tests). Triton needs power-of-two head sizes: other
models get the torch family, with a warning. Triton's fused small ops go with Triton
attention; every other backend takes the torch ops (with the native CPU kernels).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from tokenfactory.engine.attention import KVCache
from tokenfactory.engine.attention_backends import (
    AttentionBackend,
    CpuAttention,
    TorchAttention,
    TritonAttention,
)
from tokenfactory.models.config import ModelConfig
from tokenfactory.models.llama import TORCH_OPS, Ops

log = logging.getLogger(__name__)


def triton_available() -> bool:
    # Imported only when Triton may be used: the import fixes Triton's interpreter mode.
    from tokenfactory.kernels.triton_attention import triton_available

    return triton_available()


def triton_shapes_ok(config: ModelConfig) -> bool:
    """The Triton kernels need power-of-two head sizes (tl.arange)."""
    hd = config.head_dim or 0
    return hd >= 16 and hd & (hd - 1) == 0


def resolve_attention_backend(requested: str, device: torch.device, config: ModelConfig) -> str:
    """The backend name ("torch", "cpu" or "triton") for a requested one and a device."""
    torch_family = "cpu" if device.type == "cpu" else "torch"
    if requested == "auto":
        want_triton = device.type == "cuda" and triton_available()
    elif requested == "triton":
        if not triton_available():
            raise ValueError("attention_backend='triton' needs Triton (it ships with CUDA PyTorch)")
        want_triton = True
    elif requested == "torch":
        want_triton = False
    else:
        raise ValueError(f"unknown attention backend {requested!r}")
    if want_triton and not triton_shapes_ok(config):
        log.warning("head_dim %s is not a power of two: torch attention", config.head_dim)
        want_triton = False
    return "triton" if want_triton else torch_family


@dataclass
class Backends:
    attention: AttentionBackend
    ops: Ops


def make_backends(name: str, cache: KVCache, config: ModelConfig, device: torch.device) -> Backends:
    assert config.head_dim is not None
    if name == "triton":
        from tokenfactory.engine.ops_backends import TritonOps

        sms = (
            torch.cuda.get_device_properties(device).multi_processor_count
            if device.type == "cuda"
            else 0
        )
        return Backends(TritonAttention(cache, config.head_dim**-0.5, num_sms=sms), TritonOps())
    # The torch family lets SDPA and the CPU kernel derive 1/sqrt(head_dim) themselves.
    backend = {"cpu": CpuAttention, "torch": TorchAttention}[name](cache, None)
    return Backends(backend, TORCH_OPS)
