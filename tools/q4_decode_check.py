"""Decode on the stored Q4_1 weights against bf16, on the embedded model, side by side.

1. The model's layer linears as one forward calls them (q/k/v and gate/up fused, 120 calls):
   the bf16 route (`linear(..., batched=True)`: skinny kernel, AMX tiles or oneDNN by shape)
   vs `q4_linear` on the stored blocks, at each of `--rows` rows, plus the lm_head (bf16 route
   and `q8_linear` on the stored Q8_0 embedding), with the bytes each reads and the copy
   bandwidth measured in the same run (the floor: bytes / bandwidth).
2. Whole decode steps with B sequences decoding (200-token prompts): bf16 weights only, the
   earlier rule (Q4_1 for 1-2 rows, bf16 lm_head) and the current one (Q4_1 up to
   `decode_max_rows()` rows as `reads_q4` says, Q8_0 lm_head), timed in alternating rounds of
   20 steps.

Medians in milliseconds. This VM drifts by +-30% within minutes: compare within one run.

    .venv/bin/python tools/q4_decode_check.py [--rows 1,2,3,4,8] [--no-steps]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from tokenfactory.engine.config import EngineConfig
from tokenfactory.engine.engine import Engine
from tokenfactory.engine.sampling_params import SamplingParams
from tokenfactory.kernels import q4_linear as q4_linear_mod
from tokenfactory.kernels.q4_linear import Q4Weight, q4_linear
from tokenfactory.kernels.q8_linear import Q8Weight, q8_linear
from tokenfactory.models.llama import LlamaForCausalLM, linear
from tokenfactory.models.loader import load_model_files


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


def model_linears() -> tuple[list[tuple[torch.Tensor, Q4Weight]], torch.Tensor, Q8Weight | None]:
    """The embedded model's layer linears as a forward calls them (q/k/v and gate/up fused):
    (bf16 weight, Q4_1 weight) pairs, and the tied lm_head's bf16 and Q8_0 weights."""
    loaded = load_model_files(None, q4_weights=True)
    model = LlamaForCausalLM(loaded.config).to(torch.bfloat16)
    model.load_hf_state_dict(loaded.state_dict)
    model.attach_q4_weights(loaded.q4_weights)
    pairs = []
    for layer in model.layers:
        for lin in (layer.qkv_proj, layer.o_proj, layer.gate_up_proj, layer.down_proj):
            assert lin.q4 is not None
            pairs.append((lin.weight.detach(), lin.q4))
    return pairs, model.embed_tokens.weight.detach(), model.lm_head_q8


def linears(rows: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 8, 9, 12, 16), rounds: int = 5) -> None:
    """Per forward: all layer linears on the bf16 route a decode step takes without Q4_1
    (`linear(..., batched=True)`: the skinny kernel, AMX tiles or oneDNN by shape) against
    `q4_linear`, and the lm_head (bf16 route and Q8_0), in alternating rounds."""
    weights, head, head_q8 = model_linears()
    assert head_q8 is not None
    bf16_mb = sum(w.numel() * 2 for w, _ in weights) / 1e6
    q4_mb = sum(q.codes.numel() + q.dm.numel() * 4 for _, q in weights) / 1e6
    bw = copy_bandwidth_gbs()
    print(f"{len(weights)} layer linears: bf16 {bf16_mb:.0f} MB, Q4_1 {q4_mb:.0f} MB per step")
    print(f"copy bandwidth {bw:.1f} GB/s: floor {bf16_mb / bw:.1f} / {q4_mb / bw:.1f} ms")
    print(
        f"{'rows':>5} {'bf16 ms':>8} {'Q4_1 ms':>8} {'ratio':>6} {'head bf16':>9} {'head Q8_0':>9}"
    )
    for m in rows:
        xs = {k: torch.randn(m, k).bfloat16() for k in {w.shape[1] for w, _ in weights}}
        xh = torch.randn(m, head.shape[1]).bfloat16()

        def dense(xs: dict = xs) -> None:
            for w, _ in weights:
                linear(xs[w.shape[1]], w, batched=True)

        def packed(xs: dict = xs) -> None:
            for w, q in weights:
                q4_linear(xs[w.shape[1]], q)

        def lm_head(xh: torch.Tensor = xh) -> None:
            linear(xh, head, batched=True)

        def lm_head_q8(xh: torch.Tensor = xh) -> None:
            q8_linear(xh, head_q8)

        fns = {"bf16": dense, "q4": packed, "head": lm_head, "head_q8": lm_head_q8}
        times: dict[str, list[float]] = {name: [] for name in fns}
        for _ in range(rounds):  # alternating: drift and other load hit all alike
            for name, fn in fns.items():
                times[name].append(median_ms(fn, runs=7))
        d, q, h, h8 = (statistics.median(times[name]) for name in fns)
        print(f"{m:>5} {d:>8.2f} {q:>8.2f} {q / d:>6.2f} {h:>9.2f} {h8:>9.2f}", flush=True)


def steps(batches: tuple[int, ...] = (1, 2, 3, 4, 8), rounds: int = 6) -> None:
    """Whole decode steps of B sequences, three ways in alternating rounds of 20 steps: bf16
    weights only (`q4_decode` off); Q4_1 layer weights for 1-2 rows and the bf16 lm_head (the
    earlier rule); and the current rule (the rows `reads_q4` names, Q8_0 head)."""
    engines = {q4: Engine.from_model_path(None, EngineConfig(q4_decode=q4)) for q4 in (False, True)}
    model = engines[True].model
    head_q8 = model.lm_head_q8
    limit = q4_linear_mod.decode_max_rows()
    rows = q4_linear_mod._rows
    params = SamplingParams(max_tokens=4000, ignore_eos=True, temperature=0.0)
    print(
        f"{'batch':>5} {'bf16 ms':>8} {'Q4 <=2 ms':>9} {f'now (<={limit}) ms':>15} {'now/<=2':>7}"
    )
    for b in batches:
        for engine in engines.values():
            for rid in engine.unfinished_request_ids():
                engine.abort(rid)
            for _ in range(b):
                engine.add_request(list(range(100, 300)), params)
            for _ in range(5):  # prompts and warm-up
                engine.step()
        times: dict[str, list[float]] = {"bf16": [], "old": [], "now": []}
        for _ in range(rounds):
            for name in times:
                engine = engines[name != "bf16"]
                # the earlier rule: Q4_1 for 1-2 rows, bf16 lm_head
                q4_linear_mod._rows = frozenset({1, 2}) if name == "old" else rows
                model.lm_head_q8 = None if name == "old" else head_q8
                start = time.perf_counter()
                for _ in range(20):
                    engine.step()
                times[name].append((time.perf_counter() - start) / 20 * 1e3)
        q4_linear_mod._rows, model.lm_head_q8 = rows, head_q8
        dense, old, now = (statistics.median(times[k]) for k in ("bf16", "old", "now"))
        print(f"{b:>5} {dense:>8.1f} {old:>9.1f} {now:>15.1f} {now / old:>7.2f}", flush=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", default="1,2,3,4,5,6,8,9,12,16", help="row counts, part 1")
    ap.add_argument("--batches", default="1,2,4,8,16,32", help="sequences per step, part 2")
    ap.add_argument("--no-linears", action="store_true", help="part 2 only")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--no-steps", action="store_true", help="part 1 only")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    if not args.no_linears:
        linears(tuple(int(v) for v in args.rows.split(",")), args.rounds)
    if not args.no_steps:
        steps(tuple(int(v) for v in args.batches.split(",")))
