"""What n-gram speculation could give at most on a workload, at a given cost per draft token.

    python tools/speculation_ceiling.py [--workload agent] [--tokens 128] [--draft-cost 0.11,0.145]

Generates each prompt of a shipped speculation workload greedily without speculation (the
embedded model, one request at a time), then replays the outputs offline: at every decode step
the proposer's own lookup drafts up to k tokens, and the step emits the drafted tokens the
output really continues with, plus one. A step verifying d draft tokens costs 1 + c * d plain
steps (c: `--draft-cost`, what a draft token adds as a share of a step; `tools/draft_row_cost.py`
measures it). Reports, per cost, the decode-step speedup of every fixed depth and of the best
rule that follows the last step's outcome (one depth after a fully accepted draft, another
otherwise): a ceiling for any depth policy that sees only the past, on these outputs.
"""

from __future__ import annotations

import argparse
import itertools
import json
from dataclasses import dataclass

from tokenfactory.bench.spec_workloads import WORKLOADS, load_workload
from tokenfactory.engine.config import EngineConfig
from tokenfactory.engine.engine import Engine
from tokenfactory.engine.sampling_params import SamplingParams
from tokenfactory.engine.speculation.ngram import NgramProposer, lookup


@dataclass(frozen=True)
class Replay:
    tokens: int  # decode tokens the outputs hold (after each prompt's own step)
    steps: int  # decode steps they take
    drafted: int  # draft tokens verified

    def speedup(self, draft_cost: float) -> float:
        """Decode-step speedup over one token per step, each draft token at `draft_cost`."""
        return self.tokens / (self.steps + draft_cost * self.drafted)


def replay(pairs: list[tuple[list[int], list[int]]], depth_after: dict[str, int]) -> Replay:
    """Replay every (prompt, output) with the depth named by the last step's outcome
    ("start", "full": all drafted tokens accepted, "short": a rejection or no draft)."""
    proposer = NgramProposer()
    tokens = steps = drafted = 0
    for prompt, output in pairs:
        t, outcome = 1, "start"  # the first output token comes from the prompt's step
        while t < len(output):
            k = min(depth_after[outcome], len(output) - t - 1)
            draft = lookup(prompt + output[:t], k, proposer.max_n, proposer.min_n)
            accepted = 0
            while accepted < len(draft) and draft[accepted] == output[t + accepted]:
                accepted += 1
            tokens += accepted + 1
            steps += 1
            drafted += len(draft)
            outcome = "full" if draft and accepted == len(draft) else "short"
            t += accepted + 1
    return Replay(tokens, steps, drafted)


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
    pairs = []
    for item in load_workload(args.workload):
        prompt = engine.tokenizer.encode(engine.chat_prompt(item.messages))
        pairs.append((prompt, engine.generate([prompt], params)[0].token_ids))

    fixed = {
        k: replay(pairs, {"start": k, "full": k, "short": k}) for k in range(1, args.max_depth + 1)
    }
    full_depths = [k for k in (2, 4, 6, 8, 12, 16) if k <= args.max_depth]
    short_depths = [k for k in (1, 2, 3, 4) if k <= args.max_depth]
    rules = {
        (f, s): replay(pairs, {"start": s, "full": f, "short": s})
        for f, s in itertools.product(full_depths, short_depths)
    }
    result: dict = {"workload": args.workload, "prompts": len(pairs), "costs": {}}
    print(f"{args.workload}: {len(pairs)} prompts, {sum(len(o) for _, o in pairs)} output tokens")
    print(f"{'depth':>6} {'tok/step':>9} " + " ".join(f"{'x at ' + str(c):>10}" for c in costs))
    for k, r in fixed.items():
        row = " ".join(f"{r.speedup(c):>10.2f}" for c in costs)
        print(f"{k:>6} {r.tokens / r.steps:>9.2f} {row}")
    for c in costs:
        best_k = max(fixed, key=lambda k: fixed[k].speedup(c))
        best_rule = max(rules, key=lambda fs: rules[fs].speedup(c))
        print(
            f"cost {c}: best fixed depth {best_k} ({fixed[best_k].speedup(c):.2f}x); after a "
            f"full accept {best_rule[0]}, else {best_rule[1]}: {rules[best_rule].speedup(c):.2f}x"
        )
        result["costs"][str(c)] = {
            "fixed": {k: r.speedup(c) for k, r in fixed.items()},
            "best_fixed_depth": best_k,
            "best_rule": {
                "after_full": best_rule[0],
                "otherwise": best_rule[1],
                "speedup": rules[best_rule].speedup(c),
            },
        }
    result["tokens_per_step"] = {k: r.tokens / r.steps for k, r in fixed.items()}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
