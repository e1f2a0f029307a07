"""The hand kernels against PyTorch's own ops at decode shapes:
``python -m tokenfactory.kernels.bench_torch_ops [--q4] [--bf16] [--inductor]``.

- ``--q4``: the Q4_1 kernel (``q4_linear``) against ``torch._weight_int4pack_mm_for_cpu`` on
  the same 4-bit codes. That op computes w = (q - 8) * scale + zero with bf16 scales and zeros,
  so Q4_1's fp16 d and m (zero = m + 8 d) are rounded to bf16 for it: its results are not the
  loader's dequantization bit for bit, which the hand kernel's are.
- ``--bf16``: ``skinny_linear`` against ``F.linear`` (oneDNN) and, with ``--inductor``,
  Inductor's CPU GEMM: ``torch.compile(mode="max-autotune")`` of a frozen bf16 ``nn.Linear``
  (5-25 s to compile per shape and row count on 2 cores; its weights are baked in, so this
  table is warm-cache for all three).

Calls are interleaved, one of each per round, so background load hits them alike; the tables
show medians. ``--cold`` (Q4 only) rotates weight copies beyond the caches, and ``--step``
times all layer linears of a SmolLM2-135M decode step, whose ~80 MB of weights come mostly
from DRAM as in a real step.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from tokenfactory.kernels import q4_linear, skinny
from tokenfactory.kernels.q4_linear import Q4Weight, interleave_codes

# SmolLM2-135M decode linears: fused qkv, o, fused gate/up, down, (tied) lm_head.
SMOLLM2_SHAPES = "960x576,576x576,3072x576,576x1536,49152x576"


def _each_round(fn: Callable[..., object], *args: object) -> Callable[[int], object]:
    """A timed callable that ignores its round number and calls `fn(*args)`."""
    return lambda _round: fn(*args)


def _parse_shapes(text: str) -> list[tuple[int, int]]:
    return [(int(n), int(k)) for n, k in (s.lower().split("x") for s in text.split(","))]


def interleaved_medians(fns: list[Callable[[int], object]], rounds: int) -> list[float]:
    """Median seconds per call of each fn(i), called in turn every round (i: round number)."""
    times: list[list[float]] = [[] for _ in fns]
    warmup = max(3, rounds // 10)
    for i in range(rounds + warmup):
        for fn, ts in zip(fns, times, strict=True):
            t0 = time.perf_counter()
            fn(i)
            if i >= warmup:
                ts.append(time.perf_counter() - t0)
    return [statistics.median(ts) for ts in times]


def _rounds(budget: float, bytes_per_call: int) -> int:
    return int(min(3000, max(30, budget / max(bytes_per_call / 20e9, 5e-6) / 3)))


def random_q4(n: int, k: int, seed: int) -> tuple[Q4Weight, torch.Tensor, torch.Tensor]:
    """A random Q4_1 weight: (kernel layout, codes [N, K] int32, d and m [N, K/32] float32)."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(0, 16, (n, k), generator=g, dtype=torch.int32)
    d = (torch.rand(n, k // 32, generator=g) * 0.02 + 1e-3).half().float()
    m = (-8 * d * (1 + 0.1 * torch.randn(n, k // 32, generator=g))).half().float()
    halves = q.view(n, k // 32, 2, 16).to(torch.uint8)
    blocks = (halves[:, :, 0] | (halves[:, :, 1] << 4)).contiguous()  # GGUF's [N, K/32, 16]
    codes = torch.from_numpy(interleave_codes(blocks.numpy()))
    dm = torch.stack((d, m), dim=1).contiguous()
    return Q4Weight(codes, dm), q, torch.stack((d, m))


def _rel_rms(y: torch.Tensor, ref: torch.Tensor) -> float:
    return ((y.double() - ref).pow(2).mean().sqrt() / ref.pow(2).mean().sqrt()).item()


def int4pack(q: torch.Tensor, dm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The same weight for torch's int4 op: packed codes and [K/32, N, 2] bf16 scale/zero."""
    d, m = dm[0], dm[1]
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
    scale_zero = torch.stack((d, m + 8 * d), dim=-1).transpose(0, 1).contiguous().bfloat16()
    return packed, scale_zero


def bench_q4(shapes: list[tuple[int, int]], ms: list[int], budget: float, cold_mib: int) -> None:
    print("Q4_1 weights: hand kernel (q4_linear) vs torch._weight_int4pack_mm_for_cpu")
    print(f"{'N x K':>12} {'M':>3} {'hand us':>9} {'int4pack us':>12} {'speedup':>8} "
          f"{'hand err':>9} {'int4 err':>9}")  # fmt: skip
    print("(err: relative RMS error against the exact product with the Q4_1 weights)")
    for n, k in shapes:
        row_bytes = k // 2 + k // 32 * 8
        copies = max(1, -(-(cold_mib << 20) // (n * row_bytes))) if cold_mib else 1
        ws = [random_q4(n, k, seed) for seed in range(copies)]
        packs = [int4pack(q, dm) for _, q, dm in ws]
        w_ref = ws[0][0].dequantize().double()  # the file's weights, exactly
        for m in ms:
            x = torch.randn(m, k).bfloat16()
            ref = x.double() @ w_ref.t()

            def hand(i: int, x: torch.Tensor = x, ws: list = ws) -> object:  # type: ignore[type-arg]
                return q4_linear.q4_linear(x, ws[i % len(ws)][0])

            def torch_op(i: int, x: torch.Tensor = x, packs: list = packs) -> object:  # type: ignore[type-arg]
                packed, sz = packs[i % len(packs)]
                return torch.ops.aten._weight_int4pack_mm_for_cpu(x, packed, 32, sz)

            err_hand = _rel_rms(hand(0), ref)  # type: ignore[arg-type]
            err_int4 = _rel_rms(torch_op(0), ref)  # type: ignore[arg-type]
            t_hand, t_int4 = interleaved_medians([hand, torch_op], _rounds(budget, n * row_bytes))
            print(f"{f'{n} x {k}':>12} {m:>3} {t_hand * 1e6:>9.1f} {t_int4 * 1e6:>12.1f} "
                  f"{t_int4 / t_hand:>7.2f}x {err_hand:>9.2e} {err_int4:>9.2e}")  # fmt: skip


# SmolLM2-135M: 30 layers of (qkv, o, gate_up, down) weights.
STEP_LAYER_SHAPES = [(960, 576), (576, 576), (3072, 576), (576, 1536)]
STEP_LAYERS = 30


def bench_q4_step(ms: list[int], steps: int) -> None:
    """All layer linears of a SmolLM2-135M decode step (120 distinct weights, ~80 MB as Q4_1:
    mostly read from DRAM, as in a real step), hand kernel vs torch's int4 op."""
    hands: list[Q4Weight] = []
    packs: list[tuple[torch.Tensor, torch.Tensor]] = []
    for i, (n, k) in enumerate(STEP_LAYER_SHAPES * STEP_LAYERS):
        w, q, dm = random_q4(n, k, seed=i)
        hands.append(w)
        packs.append(int4pack(q, dm))
    print(f"\none SmolLM2-135M decode step, {len(hands)} Q4_1 layer linears:")
    print(f"{'M':>3} {'hand ms':>8} {'int4pack ms':>12} {'speedup':>8}")
    for m in ms:
        xs = {k: torch.randn(m, k).bfloat16() for k in (576, 1536)}

        def hand(i: int, xs: dict[int, torch.Tensor] = xs) -> object:
            for w in hands:
                q4_linear.q4_linear(xs[w.shape[1]], w)
            return None

        def torch_op(i: int, xs: dict[int, torch.Tensor] = xs) -> object:
            for (packed, sz), w in zip(packs, hands, strict=True):
                torch.ops.aten._weight_int4pack_mm_for_cpu(xs[w.shape[1]], packed, 32, sz)
            return None

        t_hand, t_int4 = interleaved_medians([hand, torch_op], steps)
        print(f"{m:>3} {t_hand * 1e3:>8.2f} {t_int4 * 1e3:>12.2f} {t_int4 / t_hand:>7.2f}x")


def _inductor_linear(w: torch.Tensor, m: int) -> Callable[[torch.Tensor], torch.Tensor]:
    import torch._inductor.config as inductor_config

    inductor_config.freezing = True  # weights as constants: the CPU GEMM template packs them
    lin = torch.nn.Linear(w.shape[1], w.shape[0], bias=False, dtype=torch.bfloat16).eval()
    lin.weight.data.copy_(w)
    fn = torch.compile(lin, mode="max-autotune", dynamic=False)
    fn(torch.randn(m, w.shape[1]).bfloat16())  # compile and autotune now
    return fn


def bench_bf16(shapes: list[tuple[int, int]], ms: list[int], budget: float, inductor: bool) -> None:
    print("bf16 weights: skinny_linear vs F.linear (oneDNN)" + (" vs Inductor" if inductor else ""))
    hdr = f"{'N x K':>12} {'M':>3} {'skinny us':>10} {'F.linear us':>12}"
    print(hdr + (f" {'Inductor us':>12} {'compile s':>10}" if inductor else ""))
    for n, k in shapes:
        w = (torch.randn(n, k) / k**0.5).bfloat16()
        for m in ms:
            x = torch.randn(m, k).bfloat16()
            fns: list[Callable[[int], object]] = [
                _each_round(skinny.skinny_linear, x, w),
                _each_round(F.linear, x, w),
            ]
            compile_s = 0.0
            if inductor:
                t0 = time.perf_counter()
                compiled = _inductor_linear(w, m)
                compile_s = time.perf_counter() - t0
                fns.append(_each_round(compiled, x))
            ts = interleaved_medians(fns, _rounds(budget, n * k * 2))
            line = f"{f'{n} x {k}':>12} {m:>3} {ts[0] * 1e6:>10.1f} {ts[1] * 1e6:>12.1f}"
            if inductor:
                line += f" {ts[2] * 1e6:>12.1f} {compile_s:>10.1f}"
                torch._dynamo.reset()
            print(line, flush=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--q4", action="store_true", help="Q4_1 kernel vs torch's int4 op")
    ap.add_argument("--bf16", action="store_true", help="skinny_linear vs F.linear")
    ap.add_argument("--inductor", action="store_true", help="with --bf16: and Inductor's GEMM")
    ap.add_argument("--shapes", default=SMOLLM2_SHAPES, help="comma-separated NxK weights")
    ap.add_argument("--q4-m", default="1,2", help="row counts for --q4")
    ap.add_argument("--bf16-m", default="1,2,4,8", help="row counts for --bf16")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    ap.add_argument("--budget", type=float, default=0.5, help="seconds of timing per case")
    ap.add_argument("--cold", action="store_true", help="--q4: rotate weights beyond caches")
    ap.add_argument("--cold-mib", type=int, default=512, help="weight bytes rotated with --cold")
    ap.add_argument("--step", action="store_true", help="--q4: also a whole decode step")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"native: {skinny.available()}, AMX: {skinny.uses_amx()}, torch "
          f"{torch.__version__}, threads {torch.get_num_threads()}")  # fmt: skip
    shapes = _parse_shapes(args.shapes)
    with torch.inference_mode():
        if args.q4 or not args.bf16:
            ms = [int(v) for v in args.q4_m.split(",")]
            bench_q4(shapes, ms, args.budget, args.cold_mib if args.cold else 0)
            if args.step:
                bench_q4_step(ms, steps=max(10, int(args.budget * 40)))
    if args.bf16:
        ms = [int(v) for v in args.bf16_m.split(",")]
        with torch.no_grad():  # Inductor's freezing wants no_grad, not inference_mode
            bench_bf16(shapes, ms, args.budget, args.inductor)


if __name__ == "__main__":
    main()
