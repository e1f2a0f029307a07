"""Benchmark skinny_linear against F.linear: ``python -m tokenfactory.kernels.bench_skinny``.

Both are timed interleaved (one call of each per round) so background load hits them alike;
the table shows medians. ``--cold`` rotates through enough weight copies that every call
reads its weights from DRAM rather than cache, as a real decode step over a whole model does.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from tokenfactory.kernels import skinny

# SmolLM2-135M (qkv, o, gate_up, down, lm_head) and Llama-8B/70B-sized ones.
DEFAULT_SHAPES = "960x576,576x576,3072x576,576x1536,49152x576,4096x4096,14336x4096,28672x4096"


def _parse_shapes(text: str) -> list[tuple[int, int]]:
    return [(int(n), int(k)) for n, k in (s.lower().split("x") for s in text.split(","))]


def _copies(n: int, k: int, cold_bytes: int) -> int:
    return max(1, -(-cold_bytes // (n * k * 2))) if cold_bytes else 1


def bench_one(
    n: int, k: int, m: int, rounds: int, cold_bytes: int, bias: bool
) -> tuple[float, float, float]:
    """Median seconds per call of F.linear and skinny_linear, and the max abs difference."""
    ws = [torch.randn(n, k).to(torch.bfloat16) for _ in range(_copies(n, k, cold_bytes))]
    b = torch.randn(n).to(torch.bfloat16) if bias else None
    x = torch.randn(m, k).to(torch.bfloat16)
    diff = (skinny.skinny_linear(x, ws[0], b).float() - F.linear(x, ws[0], b).float()).abs()
    t_ref: list[float] = []
    t_sk: list[float] = []
    warmup = max(3, rounds // 10)
    for i in range(rounds + warmup):
        w = ws[i % len(ws)]
        t0 = time.perf_counter()
        F.linear(x, w, b)
        t1 = time.perf_counter()
        skinny.skinny_linear(x, w, b)
        t2 = time.perf_counter()
        if i >= warmup:
            t_ref.append(t1 - t0)
            t_sk.append(t2 - t1)
    return statistics.median(t_ref), statistics.median(t_sk), diff.max().item()


# SmolLM2-135M: 30 layers of (qkv, o, gate_up, down) weights and a tied 49152-row lm_head.
STEP_LAYER_SHAPES = [(960, 576), (576, 576), (3072, 576), (576, 1536)]
STEP_LAYERS = 30
STEP_HEAD = (49152, 576)


def bench_step(m: int, steps: int) -> tuple[float, float]:
    """Median seconds for all linears of one SmolLM2-135M decode step: F.linear vs skinny.

    270 MB of distinct weights per step, so (as in a real step) they mostly come from DRAM.
    """
    shapes = STEP_LAYER_SHAPES * STEP_LAYERS + [STEP_HEAD]
    ws = [torch.randn(n, k).to(torch.bfloat16) for n, k in shapes]
    xs = {k: torch.randn(m, k).to(torch.bfloat16) for _, k in shapes}
    t_ref: list[float] = []
    t_sk: list[float] = []
    for i in range(steps + 2):
        t0 = time.perf_counter()
        for w in ws:
            F.linear(xs[w.shape[1]], w)
        t1 = time.perf_counter()
        for w in ws:
            skinny.skinny_linear(xs[w.shape[1]], w)
        t2 = time.perf_counter()
        if i >= 2:
            t_ref.append(t1 - t0)
            t_sk.append(t2 - t1)
    return statistics.median(t_ref), statistics.median(t_sk)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default=DEFAULT_SHAPES, help="comma-separated NxK weight shapes")
    ap.add_argument("--m", default="1,2,4,8,16,32,64,128,256", help="comma-separated row counts")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    ap.add_argument("--budget", type=float, default=0.5, help="seconds of timing per case")
    ap.add_argument("--cold", action="store_true", help="rotate weights beyond the caches")
    ap.add_argument("--cold-mib", type=int, default=1024, help="weight bytes rotated with --cold")
    ap.add_argument("--bias", action="store_true", help="include a bias vector")
    ap.add_argument(
        "--step", action="store_true", help="also time all linears of a SmolLM2-135M decode step"
    )
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    ok = skinny.available()
    load_s = time.perf_counter() - t0
    print(
        f"native kernel: {'available' if ok else 'UNAVAILABLE (timing the fallback)'}, "
        f"AMX for M>={skinny._AMX_MIN_M}: {skinny.uses_amx()}, load/build {load_s:.2f}s, "
        f"torch threads {torch.get_num_threads()}, {'cold' if args.cold else 'warm'} weights"
    )
    cold = args.cold_mib << 20 if args.cold else 0
    ms = [int(v) for v in args.m.split(",")]
    # GB/s of weights is the figure of merit while the call is memory bound (small M),
    # GFLOP/s once it turns compute bound (large M).
    hdr = f"{'N x K':>12} {'M':>3} {'F.linear us':>12} {'skinny us':>10} {'F GB/s':>7}"
    hdr += f" {'sk GB/s':>8} {'F GFLOP/s':>10} {'sk GFLOP/s':>11} {'speedup':>8} {'maxdiff':>8}"
    print(hdr)
    with torch.inference_mode():
        for n, k in _parse_shapes(args.shapes):
            for m in ms:
                # rounds sized so each case takes about --budget seconds
                est = max(n * k * 2 / 20e9, 2 * m * n * k / 500e9, 5e-6) * 2
                rounds = int(min(2000, max(20, args.budget / est)))
                ref, sk, diff = bench_one(n, k, m, rounds, cold, args.bias)
                gb, gf = n * k * 2 / 1e9, 2 * m * n * k / 1e9
                print(
                    f"{f'{n} x {k}':>12} {m:>3} {ref * 1e6:>12.1f} {sk * 1e6:>10.1f} "
                    f"{gb / ref:>7.1f} {gb / sk:>8.1f} {gf / ref:>10.1f} {gf / sk:>11.1f} "
                    f"{ref / sk:>7.2f}x {diff:>8.3g}"
                )
        if args.step:
            print(f"\none SmolLM2-135M decode step, {4 * STEP_LAYERS + 1} linears (270 MB):")
            print(f"{'M':>3} {'F.linear ms':>12} {'skinny ms':>10} {'speedup':>8}")
            for m in ms:
                ref, sk = bench_step(m, steps=max(5, int(args.budget * 20)))
                print(f"{m:>3} {ref * 1e3:>12.2f} {sk * 1e3:>10.2f} {ref / sk:>7.2f}x")


if __name__ == "__main__":
    main()
