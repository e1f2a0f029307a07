"""Where a decode step's time goes: the embedded model decoding B sequences (default 1), under
the torch profiler, with the operators grouped (layer linears, lm_head, attention, small ops)
and the rest of the step's wall time (Python, scheduling, sampling) beside them.

    .venv/bin/python tools/decode_step_profile.py [--batch 1] [--steps 30]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile

from tokenfactory.engine.engine import Engine
from tokenfactory.engine.sampling_params import SamplingParams

GROUPS = {
    "tokenfactory::skinny_linear_q4_1": "layer linears (Q4_1)",
    "tokenfactory::skinny_linear_q8_0": "lm_head (Q8_0)",
    "tokenfactory::skinny_linear": "bf16 linears (lm_head / layers)",
    "aten::mm": "bf16 linears (oneDNN)",
    "aten::addmm": "bf16 linears (oneDNN)",
    "tokenfactory::paged_decode_attention_out": "attention",
    "tokenfactory::paged_decode_attention": "attention",
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--steps", type=int, default=30)
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    engine = Engine.from_model_path(None)
    params = SamplingParams(max_tokens=4000, ignore_eos=True, temperature=0.0)
    for _ in range(args.batch):
        engine.add_request(list(range(100, 300)), params)
    for _ in range(10):  # prompts and warm-up
        engine.step()
    walls = []
    for _ in range(args.steps):
        start = time.perf_counter()
        engine.step()
        walls.append(time.perf_counter() - start)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            engine.step()
    groups: dict[str, float] = defaultdict(float)
    calls: dict[str, int] = defaultdict(int)
    for ev in prof.key_averages():
        name = GROUPS.get(ev.key, "small ops (aten, add_rms_norm, ...)")
        if ev.key.startswith("tokenfactory::add_rms_norm"):
            name = "small ops (aten, add_rms_norm, ...)"
        groups[name] += ev.self_cpu_time_total / 1e3 / args.steps
        calls[name] += ev.count // args.steps
    wall = statistics.median(walls) * 1e3
    print(
        f"batch {args.batch}: step {wall:.2f} ms unprofiled ({args.batch * 1e3 / wall:.0f} tok/s)"
    )
    for name, ms in sorted(groups.items(), key=lambda kv: -kv[1]):
        print(f"  {name:<38} {ms:6.2f} ms  {calls[name]:5d} calls")
    ops = sum(groups.values())
    print(f"  {'operators, all':<38} {ops:6.2f} ms")
    print(f"  {'the rest (Python, scheduling, sampling)':<38} {max(wall - ops, 0):6.2f} ms")


if __name__ == "__main__":
    main()
