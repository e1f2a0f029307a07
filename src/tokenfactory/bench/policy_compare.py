"""Scheduling policies side by side: fcfs, priority and tier under the same tiered load.

For each point a fresh `tokenfactory serve --policy P` runs on this machine (shipped tiers,
the preset for its device; no prefix cache carried over from another point);
`tokenfactory bench serve` drives it with the same seeded tier mix
and lengths at several request rates. 100% load is the highest rate of a sweep at which fcfs
keeps every paid promise; the comparison then runs every policy at 50/100/150/200% of it.
Everything goes through HTTP, as a customer sees it. With several `seeds` each point runs once
per seed and the runs are pooled (`point_tally`).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from tokenfactory.bench.local_factory import LocalFactory, copy_probe
from tokenfactory.bench.point_tally import PointTally
from tokenfactory.scheduling.step_model import StepCoefficients

MIX = "free=0.4,standard=0.3,high=0.2,ultra=0.08,super=0.02"
PAID = ("standard", "high", "ultra", "super")


@dataclass
class PolicyBenchOptions:
    policies: tuple[str, ...] = ("fcfs", "priority", "tier")
    sweep_rates: tuple[float, ...] = (0.1, 0.2, 0.4, 0.8)
    load_levels: tuple[float, ...] = (0.5, 1.0, 1.5, 2.0)
    duration_s: float = 60.0
    input_len: str = "lognormal:160,0.6"
    output_len: str = "lognormal:48,0.5"
    mix: str = MIX
    # Arrival/length seeds: each point runs once per seed and the runs are pooled (more
    # requests of the rare dear tiers per cell, at that many times the run time).
    seeds: tuple[int, ...] = (0,)
    # Simulator only: share of requests that stop by themselves before max_tokens.
    early_stop_share: float = 0.0
    # Simulator only: whose promises judge the load (the servers pick theirs by device), and
    # the simulated engine's sequence slots and KV blocks (16 tokens each).
    preset: str = "cpu"
    max_num_seqs: int = 64
    num_kv_blocks: int = 4096
    # Every request runs to its max_tokens: the same output under every policy, so revenue
    # differs only by the tiers delivered (the model's own stops otherwise differ per run).
    ignore_eos: bool = False
    out_dir: Path = Path("bench-results/policies")
    extra_serve_args: list[str] = field(default_factory=list)
    # A tiers TOML file instead of the shipped one (its `cpu` preset's promises): the servers
    # serve it, and the simulator judges and bills by it.
    tiers_file: Path | None = None

    # Each point's server logs its steps to STEP_LOG_DIR/POINT.steps.jsonl (for
    # `plan calibrate --step-log`).
    step_log_dir: Path | None = None

    def serve_args(self, policy: str, point: str | None = None) -> list[str]:
        tiers = ["--tiers", str(self.tiers_file)] if self.tiers_file else []
        log = (
            ["--step-log", str(self.step_log_dir / f"{point}.steps.jsonl")]
            if self.step_log_dir is not None and point is not None
            else []
        )
        return ["--policy", policy, *tiers, *log, *self.extra_serve_args]


def _exe() -> str:
    return str(Path(sys.executable).with_name("tokenfactory"))


def _load(
    factory: LocalFactory, rate: float, opts: PolicyBenchOptions, out: Path, seed: int
) -> dict:
    cmd = serve_bench_command(factory.base, factory.keys_path, rate, opts, out, seed)
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())


def serve_bench_command(
    base_url: str, keys_path: Path, rate: float, opts: PolicyBenchOptions, out: Path, seed: int
) -> list[str]:
    """The `bench serve` command line for one load point."""
    cmd = [
        _exe(), "bench", "serve", "--base-url", base_url, "--workload", "random",
        "--input-len", opts.input_len, "--output-len", opts.output_len,
        "--request-rate", str(rate), "--duration", str(opts.duration_s),
        "--num-prompts", str(max(8, int(rate * opts.duration_s * 2))),
        "--tier-mix", opts.mix, "--tier-keys", str(keys_path),
        "--seed", str(seed), "--out", str(out), "--no-progress", "--no-html",
        "--timeout", "600",
    ]
    return [*cmd, "--ignore-eos"] if opts.ignore_eos else cmd


def _point(factory: LocalFactory, rate: float, opts: PolicyBenchOptions, name: str) -> list[dict]:
    """One load point, once per seed: reports NAME.json (the first seed) and NAME-seedS.json."""
    reports = []
    for i, seed in enumerate(opts.seeds):
        path = opts.out_dir / (f"{name}.json" if i == 0 else f"{name}-seed{seed}.json")
        reports.append(_load(factory, rate, opts, path, seed))
    return reports


def summarize(*reports: dict) -> dict:
    """One load point's summary from its `bench serve` report; given several (the same point
    under different seeds), pooled over all their requests and their summed duration."""
    tally = PointTally.of_report(reports[0])
    for report in reports[1:]:
        tally.add(PointTally.of_report(report))
    return tally.summary()


def paid_kept(summary: dict, level: float = 0.99) -> bool:
    att = summary["attainment"]
    return all(att.get(t, 1.0) >= level for t in PAID if t in att)


def run(opts: PolicyBenchOptions, log=print) -> dict:
    opts.out_dir.mkdir(parents=True, exist_ok=True)
    result: dict = {"options": {k: str(v) for k, v in vars(opts).items()}, "sweep": [],
                    "levels": {}}
    # Every point's factory opens the tiers this first one's hardware probe opened.
    first = LocalFactory(opts.serve_args("fcfs"))
    probe = tempfile.TemporaryDirectory()
    try:
        copy_probe(first.data_dir, probe.name)
    finally:
        first.close()
    for rate in opts.sweep_rates:
        fcfs = LocalFactory(opts.serve_args("fcfs", f"sweep-{rate}"), probe_dir=probe.name)
        try:
            s = summarize(*_point(fcfs, rate, opts, f"sweep-{rate}"))
        finally:
            fcfs.close()
        result["sweep"].append(s)
        log(f"sweep fcfs rate {rate}: paid kept={paid_kept(s)} {s['attainment']}")
    kept = [s["rate"] for s in result["sweep"] if paid_kept(s)]
    base = max(kept) if kept else min(opts.sweep_rates)
    result["rate_100"] = base
    result["rate_100_found"] = bool(kept)
    for policy in opts.policies:
        for level in opts.load_levels:
            # A fresh server per point (and per sweep rate): the points' seeded prompts
            # repeat (the same seed draws the same first requests at any rate), and a server
            # that kept the last point's prefix cache would serve them from it.
            point = f"{policy}-{int(level * 100)}"
            factory = LocalFactory(opts.serve_args(policy, point), probe_dir=probe.name)
            try:
                rate = round(base * level, 4)
                s = summarize(*_point(factory, rate, opts, point))
            finally:
                factory.close()
            result["levels"].setdefault(policy, {})[str(level)] = s
            log(f"{policy} {int(level * 100)}% (rate {rate}): revenue "
                f"${s['revenue_usd_per_s']:.6f}/s, out {s['output_tokens_per_s']:.1f} "
                f"tok/s, attainment {s['attainment']}")
    probe.cleanup()
    (opts.out_dir / "policies.json").write_text(json.dumps(result, indent=2))
    return result


def run_simulated(
    opts: PolicyBenchOptions,
    cost: StepCoefficients | None = None,
    log=print,
    step_prior: StepCoefficients | None = None,
) -> dict:
    """The same comparison on a simulated engine (`bench.policy_sim`): no model, no HTTP, the
    step time from `cost` (default: the embedded model on the 2-core reference machine), and
    `step_prior` what the hardware probe tells the policies before any step (default: the
    policies' own prior). Seconds instead of half an hour; a preview and a regression check,
    not a measurement."""
    from tokenfactory.bench.policy_sim import SimLoad, simulate_pooled
    from tokenfactory.scheduling.calibration import step_cost
    from tokenfactory.tiers import load_tiers

    cost = cost or step_cost("embedded-cpu")
    catalog = load_tiers(opts.tiers_file, preset=opts.preset)
    result: dict = {"options": {k: str(v) for k, v in vars(opts).items()}, "sweep": [],
                    "levels": {}, "simulated": True, "step_cost": vars(cost),
                    "step_prior": vars(step_prior) if step_prior else None}

    def one(policy: str, rate: float) -> dict:
        loads = (
            SimLoad(rate, opts.duration_s, opts.mix, opts.input_len, opts.output_len, seed,
                    opts.early_stop_share)
            for seed in opts.seeds
        )
        return simulate_pooled(
            policy, loads, catalog, cost=cost, step_prior=step_prior,
            max_num_seqs=opts.max_num_seqs, num_blocks=opts.num_kv_blocks,
        )

    for rate in opts.sweep_rates:
        s = one("fcfs", rate)
        result["sweep"].append(s)
        log(f"sweep fcfs rate {rate}: paid kept={paid_kept(s)} {s['attainment']}")
    kept = [s["rate"] for s in result["sweep"] if paid_kept(s)]
    base = max(kept) if kept else min(opts.sweep_rates)
    result["rate_100"], result["rate_100_found"] = base, bool(kept)
    for policy in opts.policies:
        for level in opts.load_levels:
            s = one(policy, round(base * level, 4))
            result["levels"].setdefault(policy, {})[str(level)] = s
            log(f"{policy} {int(level * 100)}%: revenue ${s['revenue_usd_per_s']:.6f}/s, "
                f"out {s['output_tokens_per_s']:.1f} tok/s, attainment {s['attainment']}")
    opts.out_dir.mkdir(parents=True, exist_ok=True)
    (opts.out_dir / "policies-simulated.json").write_text(json.dumps(result, indent=2))
    return result


TIERS_ORDER = ("free", "standard", "high", "ultra", "super")


def markdown(result: dict) -> str:
    """The comparison as a markdown table: one row per load level and policy."""
    head = (
        "| load | policy | " + " | ".join(f"{t} attained" for t in TIERS_ORDER)
        + " | revenue $/s | of the tiers asked | output tok/s"
        + " | TTFT p99 s (free / standard / high / ultra / super) |"
    )
    lines = [head, "|" + "---|" * (len(TIERS_ORDER) + 6)]
    levels = sorted({lvl for p in result["levels"].values() for lvl in p}, key=float)
    for level in levels:
        for policy, by_level in result["levels"].items():
            s = by_level.get(level)
            if s is None:
                continue
            att = [s["attainment"].get(t) for t in TIERS_ORDER]
            ttft = [s["ttft_p99_s"].get(t) for t in TIERS_ORDER]
            seeds = f", {s['runs']} seeds" if s.get("runs", 1) > 1 else ""
            lines.append(
                f"| {int(float(level) * 100)}% ({s['rate']:g}/s{seeds}) | {policy} | "
                + " | ".join("-" if a is None else f"{a:.0%}" for a in att)
                + f" | {s['revenue_usd_per_s']:.6f} | {_share_of_asked(s)}"
                + f" | {s['output_tokens_per_s']:.1f} | "
                + " / ".join("-" if x is None else f"{x:.1f}" for x in ttft)
                + " |"
            )
    return "\n".join(lines)


def _share_of_asked(summary: dict) -> str:
    """Revenue billed as a share of the same usage at the tiers asked (all promises kept)."""
    asked = summary.get("revenue_at_tiers_asked_usd_per_s")
    return f"{summary['revenue_usd_per_s'] / asked:.0%}" if asked else "-"


def plot_speeds(out_dir: Path, level: float, policies: tuple[str, ...], path: Path) -> None:
    """Per-tier decode speed of each request against its start time, one panel per policy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, grid = plt.subplots(
        1, len(policies), figsize=(5 * len(policies), 3.6), sharey=True, squeeze=False
    )
    axes = list(grid[0])  # one panel per policy, also when there is one policy
    for ax, policy in zip(axes, policies, strict=True):
        report = json.loads((out_dir / f"{policy}-{int(level * 100)}.json").read_text())
        for tier in TIERS_ORDER:
            pts = [(r["start_s"], r["decode_tokens_per_s"]) for r in report["runs"][0]["requests"]
                   if r["tier"] == tier and r["ok"] and r["decode_tokens_per_s"]]
            if pts:
                xs, ys = zip(*pts, strict=True)
                ax.scatter(xs, ys, s=10, label=tier)
        ax.set_title(f"{policy}, {int(level * 100)}% load")
        ax.set_xlabel("request start (s)")
        ax.set_yscale("log")
    axes[0].set_ylabel("decode tokens/s per request")
    axes[-1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
