"""Shared pieces of the planner tests: a small synthetic chip and model whose numbers are
easy to reason about."""

from __future__ import annotations

import pytest

from tokenfactory.planner.hardware import Hardware
from tokenfactory.planner.perf_model import PerfParams
from tokenfactory.planner.shapes import ModelShape


def toy_shape() -> ModelShape:
    # 1 GB of weights, 1 MB of KV per token, 2 GFLOP per token, no attention FLOPs.
    return ModelShape("toy", 1e9, 1e6, 2e9, 0.0, 100_000)


def toy_hardware(bandwidth_gbs: float = 1000.0, preset: str = "gpu", **params: float) -> Hardware:
    # 1 TB/s and 1 PFLOP/s: a 1 GB weight read is 1 ms at full efficiency.
    return Hardware(
        name="toy-chip",
        description="a synthetic chip",
        tier_preset=preset,
        memory_bandwidth_gbs=bandwidth_gbs,
        bf16_tflops=1000.0,
        fp8_tflops=2000.0,
        memory_gb=100.0,
        power_w=500.0,
        params=PerfParams(**({"base_s": 0.001, "memory_efficiency": 1.0,
                              "compute_efficiency": 1.0} | params)),
    )


@pytest.fixture
def shape() -> ModelShape:
    return toy_shape()


@pytest.fixture
def chip() -> Hardware:
    return toy_hardware()


@pytest.fixture
def slow_chip() -> Hardware:
    """A 20 GB/s chip (a 50 ms step) judged by the cpu promises: a few requests/s per tier,
    so a simulated minute takes a fraction of a second."""
    return toy_hardware(bandwidth_gbs=20.0, preset="cpu")
