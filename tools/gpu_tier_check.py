"""The tier policy on a real engine in process: fcfs, priority and tier on one loaded model.

Made for a GPU machine that has PyTorch but not the server's dependencies: a named
architecture with random weights (speed does not depend on weight values), no HTTP. It also
runs on a CPU with the embedded model (`--model embedded --device cpu`, small rates).

1. Capacity probe, as `serve` runs it at start: decode step time per batch size and idle
   TTFT, which decide the tiers this hardware can open (`--preset`, `gpu` on CUDA).
2. Crowd: `--crowd` free requests, then `--dear` requests of the dearest open tier 1.5 s
   later, under each policy. Shows whether a policy buys the dear requests their speed.
3. Load: the policy benchmark's mix over the open tiers (Poisson arrivals, lognormal lengths)
   at each of `--rates`, for fcfs and tier: attainment per tier, revenue, output tokens/s,
   step time and the host time the scheduler took per step.

Writes `gpu_tier_check.json` (after every run, so a run cut short keeps what it measured) and
prints tables. `--budget-s` stops starting new runs when the time is nearly spent.

    PYTHONPATH=src python3 tools/gpu_tier_check.py --out DIR [--rates 4,8,16,24]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

from tokenfactory.bench.engine_load import run_engine_load
from tokenfactory.bench.policy_compare import MIX
from tokenfactory.bench.policy_sim import LoadRequest, SimLoad, load_requests
from tokenfactory.bench.serve.tiers_info import parse_mix
from tokenfactory.engine.config import EngineConfig
from tokenfactory.engine.engine import Engine
from tokenfactory.scheduling.policy import known_policies
from tokenfactory.server.capacity import measure, tier_statuses
from tokenfactory.tiers import TierCatalog, load_tiers

STARTED = time.monotonic()


def say(msg: str) -> None:
    print(f"[{time.monotonic() - STARTED:6.1f}s] {msg}", flush=True)


def build_engine(args: argparse.Namespace) -> Engine:
    config = EngineConfig(
        device=args.device, dtype="auto", max_num_seqs=args.max_num_seqs, seed=0,
        max_num_batched_tokens=args.max_num_batched_tokens,
    )
    if args.model == "embedded":
        return Engine.from_model_path(None, config)
    if args.model:
        return Engine.from_model_path(args.model, config)
    return Engine.from_random_weights(args.arch, config)


def crowd_requests(catalog: TierCatalog, free: int, dear: int, dear_tier: str) -> list:
    """`free` free requests in the first half second, then `dear` dear ones from 1.5 s."""
    reqs = []
    for i in range(free):
        prompt = [1 + (i * 37 + k) % 991 for k in range(256)]
        terms = catalog.service_terms(catalog["free"])
        reqs.append(LoadRequest(0.5 * i / max(free, 1), f"free{i}", prompt, 400, terms))
    for i in range(dear):
        prompt = [2 + (i * 53 + k) % 983 for k in range(256)]
        terms = catalog.service_terms(catalog[dear_tier])
        reqs.append(LoadRequest(1.5 + 0.1 * i, f"dear{i}", prompt, 300, terms))
    return reqs


def fitted(engine: Engine, summary: dict) -> dict:
    """The summary, plus the step-time model the policy ended with (if it has one)."""
    model = getattr(engine.scheduler.policy, "model", None)
    if model is not None:
        summary["step_model_end"] = model.coefficients.__dict__
        summary["step_model_capped_steps"] = getattr(model, "num_capped", None)
    return summary


def open_mix(open_tiers: list[str]) -> str:
    mix = {t: w for t, w in parse_mix(MIX).items() if t in open_tiers}
    return ",".join(f"{t}={w}" for t, w in mix.items())


def row(name: str, s: dict, tiers: list[str]) -> str:
    cells = []
    for t in tiers:
        p = s["per_tier"].get(t)
        if p is None:
            cells.append("-")
            continue
        att = s["attainment"].get(t)
        speed = p["tokens_per_s_median"]
        cells.append(
            f"{att:.0%} {speed:.0f}/s" if att is not None and speed is not None else "-"
        )
    return (
        f"| {name} | " + " | ".join(cells)
        + f" | {s['output_tokens_per_s']:.0f} | {s['revenue_usd_per_s'] * 1e3:.3f}"
        + f" | {s['step_ms_mean']:.1f} | {s['schedule_ms_mean']:.2f} |"
    )


def _rates(text: str) -> list[float]:
    try:
        rates = [float(r) for r in text.split(",") if r.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of numbers: {text!r}") from None
    if not rates or any(r <= 0 for r in rates):
        raise argparse.ArgumentTypeError(f"rates must be positive numbers: {text!r}")
    return rates


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpu-tier-out")))
    ap.add_argument("--arch", default="llama-3.1-8b")
    ap.add_argument("--model", default=None, help="a GGUF/HF path, or 'embedded'")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--preset", default=None, help="tier preset (default: gpu on CUDA)")
    ap.add_argument("--max-num-seqs", type=int, default=256)
    ap.add_argument("--max-num-batched-tokens", type=int, default=2048)
    ap.add_argument("--crowd", type=int, default=192)
    ap.add_argument("--dear", type=int, default=4)
    ap.add_argument("--crowd-policies", default="fcfs,priority,tier")
    ap.add_argument("--rates", type=_rates, default="4,8,16,24")
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--input-len", default="lognormal:512,0.6")
    ap.add_argument("--output-len", default="lognormal:256,0.5")
    ap.add_argument("--policies", default="fcfs,tier")
    ap.add_argument("--budget-s", type=float, default=420.0)
    args = ap.parse_args()
    for name in {*args.policies.split(","), *args.crowd_policies.split(",")}:
        if name not in known_policies():
            ap.error(f"unknown policy {name!r}; known: {', '.join(known_policies())}")
    args.out.mkdir(parents=True, exist_ok=True)
    result: dict = {
        "command": " ".join(sys.argv),
        "torch": torch.__version__,
        "device_name": (
            torch.cuda.get_device_name(0) if args.device == "cuda" else platform.processor()
        ),
        "crowd": {},
        "load": {},
    }
    path = args.out / "gpu_tier_check.json"

    def save() -> None:
        path.write_text(json.dumps(result, indent=2, default=str))

    say(f"building {args.model or args.arch} on {args.device}")
    engine = build_engine(args)
    result["engine"] = {
        "model": engine.model_name, "kv_blocks": engine.num_kv_blocks,
        "max_num_seqs": args.max_num_seqs, "max_num_batched_tokens": args.max_num_batched_tokens,
    }
    batches = tuple(b for b in (1, 16, 64, 128, 256) if b <= args.max_num_seqs)
    cap = measure(engine, batches)
    # As `serve` does: the policies' step-time model starts from what the probe measured.
    engine.set_step_prior(cap.step_prior())
    result["step_prior"] = cap.step_prior().__dict__
    preset = args.preset or ("gpu" if args.device == "cuda" else "cpu")
    catalog = load_tiers(preset=preset)
    statuses = tier_statuses(catalog, cap)
    open_tiers = [n for n, st in statuses.items() if st.available]
    result["capacity"] = cap.to_dict()
    result["tiers"] = {n: {"open": st.available, "reason": st.reason} for n, st in statuses.items()}
    say("probe: " + ", ".join(
        f"batch {p.batch} {p.step_s * 1e3:.2f} ms" for p in cap.points
    ) + f"; idle TTFT {cap.ttft_s * 1e3:.0f} ms; open tiers: {', '.join(open_tiers)}")
    save()
    if "free" not in open_tiers or len(open_tiers) < 2:
        say("need the free tier and one dearer tier open; stopping")
        return 1
    dear_tier = open_tiers[-1]
    tiers = [t for t in catalog.names if t in open_tiers]
    header = (
        "| policy | " + " | ".join(tiers)
        + " | output tok/s | revenue m$/s | step ms | schedule ms |\n|"
        + "---|" * (len(tiers) + 5)
    )

    def out_of_time(next_run_s: float) -> bool:
        left = args.budget_s - (time.monotonic() - STARTED)
        if left < next_run_s:
            say(f"{left:.0f} s of budget left, not enough for the next run: stopping")
            return True
        return False

    # Discarded runs first, one per policy: kernels compile on first use for the shapes each
    # policy's steps take (prompt chunk sizes, batch sizes), and the measured runs should
    # not pay for that.
    for policy in args.policies.split(","):
        engine.use_policy(policy)
        warm = crowd_requests(catalog, args.crowd, 1, dear_tier)
        run_engine_load(engine, warm, catalog, rate=0.0, duration_s=2.0, drain_limit_s=20)
        say(f"warm-up run ({policy}) done")
    lines = [f"crowd: {args.crowd} free, then {args.dear} {dear_tier}", header]
    for policy in args.crowd_policies.split(","):
        if out_of_time(25):
            break
        engine.use_policy(policy)
        reqs = crowd_requests(catalog, args.crowd, args.dear, dear_tier)
        res = run_engine_load(engine, reqs, catalog, rate=0.0, duration_s=2.0, drain_limit_s=40)
        s = fitted(engine, res.summary())
        result["crowd"][policy] = s
        save()
        lines.append(row(policy, s, tiers))
        say(lines[-1])
    for rate in args.rates:
        for policy in args.policies.split(","):
            if out_of_time(args.duration + 15):
                break
            engine.use_policy(policy)
            load = SimLoad(
                rate=rate, duration_s=args.duration, mix=open_mix(open_tiers),
                input_len=args.input_len, output_len=args.output_len, seed=0,
            )
            res = run_engine_load(
                engine, load_requests(load, catalog), catalog, rate, args.duration,
                drain_limit_s=30,
            )
            s = fitted(engine, res.summary())
            result["load"].setdefault(str(rate), {})[policy] = s
            save()
            lines.append(row(f"{policy} @ {rate:g}/s", s, tiers))
            say(lines[-1])
    print("\n".join(lines))
    (args.out / "gpu_tier_check.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
