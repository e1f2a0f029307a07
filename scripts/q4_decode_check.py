"""Decode on the stored Q4_1 weights against bf16, on the embedded model, side by side.

1. Every Q4_1 layer linear of the GGUF in turn (one decode step's layer weights, as a step
   reads them): `skinny_linear` on the dequantized bf16 weights vs `q4_linear` on the stored
   blocks, at 1 / 2 / 3 / 4 / 8 rows, with the bytes each reads and the copy bandwidth
   measured in the same run (the floor: bytes / bandwidth).
2. Whole decode steps: two engines over the same weights, `q4_decode` off and on, each with B
   sequences decoding (200-token prompts), timed in alternating rounds of 20 steps.

Medians in milliseconds. This VM drifts by +-30% within minutes: compare within one run.

    .venv/bin/python scripts/q4_decode_check.py
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from tokenfactory.engine.config import EngineConfig
from tokenfactory.engine.engine import Engine
from tokenfactory.engine.sampling_params import SamplingParams
from tokenfactory.kernels.q4_linear import Q4Weight, q4_linear
from tokenfactory.kernels.skinny import skinny_linear
from tokenfactory.models.embedded import embedded_model_path
from tokenfactory.models.gguf_file import open_gguf
from tokenfactory.models.gguf_loader import _dequantize


def median_ms(fn: Callable[[], object], runs: int = 15) -> float:
    fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def copy_bandwidth_gbs() -> float:
    src = torch.empty(256 << 20, dtype=torch.uint8).fill_(1)
    dst = torch.empty_like(src)
    ms = median_ms(lambda: dst.copy_(src), runs=7)
    return 2 * src.numel() / (ms / 1e3) / 1e9  # read + write


def linears(rows: tuple[int, ...] = (1, 2, 3, 4, 8), rounds: int = 3) -> None:
    f = open_gguf(embedded_model_path())
    weights = []
    for t in f.tensors:
        if t.tensor_type.name == "Q4_1":
            dense = torch.from_numpy(np.array(_dequantize(f, t), dtype=np.float32)).bfloat16()
            weights.append((dense, Q4Weight.from_gguf_blocks(np.asarray(t.data))))
    bf16_mb = sum(w.numel() * 2 for w, _ in weights) / 1e6
    q4_mb = sum(q.codes.numel() + q.dm.numel() * 4 for _, q in weights) / 1e6
    bw = copy_bandwidth_gbs()
    print(f"{len(weights)} layer linears: bf16 {bf16_mb:.0f} MB, Q4_1 {q4_mb:.0f} MB per step")
    print(f"copy bandwidth {bw:.1f} GB/s: floor {bf16_mb / bw:.1f} / {q4_mb / bw:.1f} ms")
    print(f"{'rows':>5} {'bf16 ms':>8} {'Q4_1 ms':>8} {'ratio':>6}")
    for m in rows:
        pairs = [(w, q, torch.randn(m, w.shape[1]).bfloat16()) for w, q in weights]

        def dense(pairs: list = pairs) -> None:
            for w, _, x in pairs:
                skinny_linear(x, w)

        def packed(pairs: list = pairs) -> None:
            for _, q, x in pairs:
                q4_linear(x, q)

        times: dict[str, list[float]] = {"bf16": [], "q4": []}
        for _ in range(rounds):  # alternating: the VM's drift hits both alike
            times["bf16"].append(median_ms(dense))
            times["q4"].append(median_ms(packed))
        d, q = statistics.median(times["bf16"]), statistics.median(times["q4"])
        print(f"{m:>5} {d:>8.1f} {q:>8.1f} {q / d:>6.2f}")


def steps(batches: tuple[int, ...] = (1, 2, 3, 4, 8), rounds: int = 6) -> None:
    engines = {
        q4: Engine.from_model_path(None, EngineConfig(q4_decode=q4)) for q4 in (False, True)
    }
    params = SamplingParams(max_tokens=4000, ignore_eos=True, temperature=0.0)
    print(f"{'batch':>5} {'bf16 ms':>8} {'Q4_1 ms':>8} {'ratio':>6}")
    for b in batches:
        times: dict[bool, list[float]] = {False: [], True: []}
        for engine in engines.values():
            for rid in engine.unfinished_request_ids():
                engine.abort(rid)
            for _ in range(b):
                engine.add_request(list(range(100, 300)), params)
            for _ in range(5):  # prompts and warm-up
                engine.step()
        for _ in range(rounds):
            for q4, engine in engines.items():
                start = time.perf_counter()
                for _ in range(20):
                    engine.step()
                times[q4].append((time.perf_counter() - start) / 20 * 1e3)
        dense, packed = statistics.median(times[False]), statistics.median(times[True])
        print(f"{b:>5} {dense:>8.1f} {packed:>8.1f} {packed / dense:>6.2f}")


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    linears()
    steps()
