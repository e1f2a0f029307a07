"""The machine's physical limits, measured in the same run as the benchmark they judge."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch


@dataclass
class Roofline:
    device: str
    dtype: str
    copy_bandwidth_gbs: float  # bytes read + written per second by a large tensor copy
    matmul_tflops: float  # dense matmul rate in the model's dtype

    def step_floor_s(self, bytes_moved: float, flops: float) -> float:
        """The fastest a step can be: bound by memory traffic or by arithmetic."""
        return max(
            bytes_moved / (self.copy_bandwidth_gbs * 1e9), flops / (self.matmul_tflops * 1e12)
        )

    def to_dict(self) -> dict:
        return asdict(self)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _best_time(fn, device: torch.device, repeats: int) -> float:
    fn()
    _sync(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def _copy_time(n_bytes: int, device: torch.device) -> float:
    src = torch.empty(n_bytes // 4, dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    return _best_time(lambda: dst.copy_(src), device, 5)


def measure_roofline(device: torch.device, dtype: torch.dtype) -> Roofline:
    """Copy bandwidth over a buffer far larger than caches, and a large square matmul rate."""
    gpu = device.type == "cuda"
    n_bytes = (2 << 30) if gpu else (512 << 20)
    t = _copy_time(n_bytes, device)
    bandwidth = 2 * n_bytes / t / 1e9  # a copy reads and writes every byte

    n = 8192 if gpu else 2048
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    t = _best_time(lambda: torch.mm(a, b), device, 10 if gpu else 3)
    tflops = 2 * n**3 / t / 1e12
    return Roofline(str(device), str(dtype).replace("torch.", ""), bandwidth, tflops)
