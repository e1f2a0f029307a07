"""What n-gram speculation could give at most on a workload, at a given cost per draft token.

    python tools/speculation_ceiling.py [--workload agent] [--tokens 128] [--draft-cost 0.11,0.145]

Generates each prompt of a shipped speculation workload greedily without speculation (the
embedded model, one request at a time), then replays the outputs offline: at every decode step
the proposer's own lookup drafts up to k tokens, and the step emits the drafted tokens the
output really continues with, plus one. A step verifying d draft tokens costs 1 + c * d plain
steps (c: `--draft-cost`, what a draft token adds as a share of a step; `tools/draft_row_cost.py`
measures it). Reports, per cost, the decode-step speedup of every fixed depth and of the best
rule that follows the last step's outcome (one depth after a fully accepted draft, another
otherwise; the replay is `spec_bench.lookup_potential`): a ceiling for any depth policy that
sees only the past, on these outputs.
"""

from __future__ import annotations

import argparse
import itertools
import json

from tokenfactory.bench.spec_bench import LookupPotential, lookup_potential
from tokenfactory.bench.spec_workloads import WORKLOADS, load_workload
from tokenfactory.engine.config import EngineConfig
from tokenfactory.engine.engine import Engine
from tokenfactory.engine.sampling_params import SamplingParams


def speedup(replay: LookupPotential, draft_cost: float) -> float:
    """Decode-step speedup over one token per step, each draft token at `draft_cost` of a
    step."""
    return replay.tokens / (replay.steps + draft_cost * replay.drafted)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workload", choices=WORKLOADS, default="agent")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--draft-cost", default="0.11,0.145", help="shares of a step, comma-separated")
    ap.add_argument("--max-depth", type=int, default=16)
    args = ap.parse_args()
    costs = [float(c) for c in args.draft_cost.split(",") if c.strip()]
    if not costs or any(c < 0 for c in costs) or args.max_depth < 1 or args.tokens < 2:
        raise SystemExit("need costs >= 0, --max-depth >= 1 and --tokens >= 2")
    engine = Engine.from_model_path(None, EngineConfig())
    assert engine.tokenizer is not None
    params = SamplingParams(temperature=0.0, max_tokens=args.tokens)
    prompts = [
        engine.tokenizer.encode(engine.chat_prompt(item.messages))
        for item in load_workload(args.workload)
    ]
    outputs = [engine.generate([p], params)[0].token_ids for p in prompts]

    fixed = {k: lookup_potential(prompts, outputs, k) for k in range(1, args.max_depth + 1)}
    full_depths = [k for k in (2, 4, 6, 8, 12, 16) if k <= args.max_depth]
    short_depths = [k for k in (1, 2, 3, 4) if k <= args.max_depth]
    rules = {
        (f, s): lookup_potential(prompts, outputs, s, k_after_full=f)
        for f, s in itertools.product(full_depths, short_depths)
    }
    result: dict = {"workload": args.workload, "prompts": len(prompts), "costs": {}}
    print(f"{args.workload}: {len(prompts)} prompts, {sum(map(len, outputs))} output tokens")
    print(f"{'depth':>6} {'tok/step':>9} " + " ".join(f"{'x at ' + str(c):>10}" for c in costs))
    for k, r in fixed.items():
        row = " ".join(f"{speedup(r, c):>10.2f}" for c in costs)
        print(f"{k:>6} {r.tokens_per_step:>9.2f} {row}")
    for c in costs:
        best_k = max(fixed, key=lambda k: speedup(fixed[k], c))
        best_rule = max(rules, key=lambda fs: speedup(rules[fs], c))
        print(
            f"cost {c}: best fixed depth {best_k} ({speedup(fixed[best_k], c):.2f}x); after a "
            f"full accept {best_rule[0]}, else {best_rule[1]}: "
            f"{speedup(rules[best_rule], c):.2f}x"
        )
        result["costs"][str(c)] = {
            "fixed": {k: speedup(r, c) for k, r in fixed.items()},
            "best_fixed_depth": best_k,
            "best_rule": {
                "after_full": best_rule[0],
                "otherwise": best_rule[1],
                "speedup": speedup(rules[best_rule], c),
            },
        }
    result["tokens_per_step"] = {k: r.tokens_per_step for k, r in fixed.items()}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
