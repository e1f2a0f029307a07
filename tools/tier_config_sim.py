"""Try values of one `TierPolicyConfig` field in the simulator, beside fcfs, on the policy
benchmark's mix.

For each rate, fcfs and then `tier` with each value run over the same arrival seeds (pooled),
and a markdown table prints attainment per tier, revenue and output tokens/s, with each
variant's revenue against the first value's. Seconds to a few minutes, depending on the load.

    .venv/bin/python tools/tier_config_sim.py prefill_worth=1,2,4 --rates 4.5,6 \\
        --seeds 0-11 [--input-len lognormal:480,0.6] [--cost slower]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from tokenfactory.bench.policy_compare import MIX, TIERS_ORDER
from tokenfactory.bench.policy_sim import SimLoad, simulate_pooled
from tokenfactory.scheduling.calibration import step_cost
from tokenfactory.scheduling.tier.config import TierPolicyConfig
from tokenfactory.tiers import load_tiers

COSTS = {"embedded": step_cost("embedded-cpu"), "slower": step_cost("slower-cpu")}


def parse_setting(text: str) -> tuple[str, list[float]]:
    name, _, values = text.partition("=")
    fields = {f.name for f in dataclasses.fields(TierPolicyConfig)}
    if name not in fields or not values:
        raise argparse.ArgumentTypeError(
            f"expected FIELD=V1,V2,... with FIELD one of {', '.join(sorted(fields))}"
        )
    return name, [float(v) for v in values.split(",")]


def parse_seeds(text: str) -> list[int]:
    if "-" in text:
        lo, hi = text.split("-")
        return list(range(int(lo), int(hi) + 1))
    return [int(s) for s in text.split(",")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("setting", type=parse_setting, help="FIELD=V1,V2,... of TierPolicyConfig")
    ap.add_argument("--rates", default="4.5,6", help="requests/s, comma-separated")
    ap.add_argument("--seeds", type=parse_seeds, default=list(range(8)), help="0-7 or 0,3,5")
    ap.add_argument("--duration", type=float, default=120.0)
    ap.add_argument("--input-len", default="lognormal:160,0.6")
    ap.add_argument("--output-len", default="lognormal:48,0.5")
    ap.add_argument("--early-stop-share", type=float, default=0.09)
    ap.add_argument("--cost", choices=sorted(COSTS), default="embedded")
    args = ap.parse_args()
    field, values = args.setting
    catalog = load_tiers(None, "cpu")

    def run(rate: float, policy: str, **kwargs) -> dict:
        loads = (
            SimLoad(rate, args.duration, MIX, args.input_len, args.output_len, seed,
                    args.early_stop_share)
            for seed in args.seeds
        )
        return simulate_pooled(policy, loads, catalog, cost=COSTS[args.cost], **kwargs)

    print(f"| rate | policy | {' | '.join(TIERS_ORDER)} | revenue $/s | vs first | output tok/s |")
    print("|---|---|" + "---|" * (len(TIERS_ORDER) + 3))
    for rate in (float(r) for r in args.rates.split(",")):
        rows = [("fcfs", run(rate, "fcfs"))]
        for value in values:
            config = TierPolicyConfig(**{field: type(getattr(TierPolicyConfig(), field))(value)})
            rows.append((f"tier {field}={value:g}", run(rate, "tier", config=config)))
            print(f"  {rate:g}/s {field}={value:g} done", file=sys.stderr, flush=True)
        first = rows[1][1]["revenue_usd_per_s"]
        for name, s in rows:
            att = " | ".join(f"{s['attainment'].get(t, 1.0):.0%}" for t in TIERS_ORDER)
            ratio = s["revenue_usd_per_s"] / first if first else float("nan")
            print(f"| {rate:g}/s | {name} | {att} | {s['revenue_usd_per_s']:.6f} | "
                  f"{ratio:.2f}x | {s['output_tokens_per_s']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
