"""Tier pools against one mixed pool, simulated: K engines behind the fleet's router.

Each engine is the project's `SimulatedEngine` (the real scheduler and policy on a step-time
model); the router is the fleet's own `choose_replica`, fed each engine's waiting and running
requests as the front would read them from the replicas' stats. The load is the policy
benchmark's (`bench.policy_sim.load_requests`) and it is scored as that benchmark scores it
(`tally_served`): per-tier promise attainment and revenue at the tiers delivered.

    python -m tokenfactory.fleet.pool_sim --engines 8 --high-pool 1,2

finds the mixed pool's capacity under fcfs (the highest swept rate at which every paid tier
keeps >= 99% of its promises), then runs `--level` times that rate through each layout.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated

import typer

from tokenfactory.bench.point_tally import PointTally
from tokenfactory.bench.policy_compare import paid_kept
from tokenfactory.bench.policy_sim import Served, SimLoad, load_requests, tally_served
from tokenfactory.engine.sampling_params import SamplingParams
from tokenfactory.engine.sequence import FinishReason
from tokenfactory.engine.sequence import Sequence as EngineSequence
from tokenfactory.fleet.router import ReplicaLoad, RoutingRules, choose_replica
from tokenfactory.scheduling.calibration import step_cost
from tokenfactory.scheduling.policy import make_policy
from tokenfactory.scheduling.simulator import SimulatedEngine
from tokenfactory.scheduling.step_model import StepCoefficients
from tokenfactory.tiers import TierCatalog, load_tiers

Pools = Mapping[str, tuple[int, ...]]


@dataclass(frozen=True)
class FleetSim:
    """The simulated fleet: how many engines, their step costs and sizes."""

    engines: int = 8
    cost: str = "h200-llama-8b"  # data/step_costs.toml names
    prior: str | None = "h200-llama-8b-probe"
    max_num_seqs: int = 256
    num_blocks: int = 65536
    noise: float = 0.15


@dataclass
class FleetRun:
    """One load through one layout: the scored tally and how many requests each engine got."""

    tally: PointTally
    routed: list[int] = field(default_factory=list)


def tier_pools(engines: int, high: int, paced: Sequence[str], rest: Sequence[str]) -> Pools:
    """The first `high` engines for the `paced` tiers, the others for the `rest`."""
    if not 0 < high < engines:
        raise ValueError(f"the high pool needs 1 to {engines - 1} of {engines} engines")
    fast, slow = tuple(range(high)), tuple(range(high, engines))
    return {**{t: fast for t in paced}, **{t: slow for t in rest}}


def simulate_fleet(
    policy: str, load: SimLoad, catalog: TierCatalog, fleet: FleetSim, pools: Pools
) -> FleetRun:
    """Run `load` through `fleet.engines` engines, each scheduling with `policy`, every
    request routed as the front routes it (no pools: one mixed pool)."""
    cost = step_cost(fleet.cost)
    prior: StepCoefficients | None = step_cost(fleet.prior) if fleet.prior else None
    engines = [
        _engine(policy, cost, prior, fleet, load.seed * 1000 + i) for i in range(fleet.engines)
    ]
    rules = RoutingRules(pools=dict(pools))
    routed = [0] * fleet.engines
    for req in load_requests(load, catalog):
        for engine in engines:
            engine.run_until(req.at_s)
        loads = [_load(i, e) for i, e in enumerate(engines)]
        index = choose_replica(loads, rules, req.terms.tier)  # random prompts share no prefix
        routed[index] += 1
        terms = replace(req.terms, received_at=req.at_s)
        seq = EngineSequence(
            req.request_id, req.prompt, SamplingParams(max_tokens=req.max_tokens), terms=terms
        )
        engines[index].add(seq, req.stop_after)
    for engine in engines:
        engine.drain()
    served = [_served(seq) for engine in engines for seq in engine.seqs.values()]
    end = max([load.duration_s, *(e.now for e in engines)])
    return FleetRun(tally_served(served, load.rate, end, catalog), routed)


def _engine(
    policy: str,
    cost: StepCoefficients,
    prior: StepCoefficients | None,
    fleet: FleetSim,
    seed: int,
) -> SimulatedEngine:
    scheduling = make_policy(policy)
    if prior is not None:
        scheduling.set_step_prior(prior)
    return SimulatedEngine(
        scheduling,
        cost,
        num_blocks=fleet.num_blocks,
        max_num_seqs=fleet.max_num_seqs,
        noise=fleet.noise,
        seed=seed,
    )


def _load(index: int, engine: SimulatedEngine) -> ReplicaLoad:
    # The front's own count (in flight) is what the engine holds: the stats are never late here.
    held = engine.scheduler.num_waiting + engine.scheduler.num_running
    return ReplicaLoad(
        index,
        available=True,
        waiting=engine.scheduler.num_waiting,
        running=engine.scheduler.num_running,
        in_flight=held,
    )


def _served(seq: EngineSequence) -> Served:
    terms = seq.terms
    assert terms is not None, "every simulated request carries its tier's terms"
    return Served(
        tier=terms.tier,
        received_at=terms.received_at or 0.0,
        first_token_time=seq.first_token_time,
        finished_time=seq.finished_time,
        prompt_tokens=seq.num_prompt_tokens,
        output_tokens=seq.num_output_tokens,
        shed=seq.finish_reason is FinishReason.SHED,
    )


@dataclass(frozen=True)
class Layout:
    name: str
    policy: str
    pools: Pools


def compare(
    catalog: TierCatalog,
    fleet: FleetSim,
    sweep: Sequence[float],
    level: float,
    high_pools: Sequence[int],
    load: SimLoad,
    log=print,
) -> dict:
    """The mixed pool's fcfs capacity from `sweep`, then `level` times it through: fcfs mixed,
    tier mixed, and tier with the paced tiers on each of `high_pools` engines."""
    paced = ("high", "ultra", "super")
    rest = ("free", "standard")
    layouts = [Layout("mixed", "fcfs", {}), Layout("mixed", "tier", {})]
    layouts += [
        Layout(f"high on {n}, rest on {fleet.engines - n}", "tier",
               tier_pools(fleet.engines, n, paced, rest))
        for n in high_pools
    ]
    rate_100 = None
    swept = []
    for rate in sweep:
        s = simulate_fleet("fcfs", replace(load, rate=rate), catalog, fleet, {}).tally.summary()
        swept.append(s)
        kept = paid_kept(s)
        log(f"fcfs mixed at {rate:g} req/s: paid kept={kept} {_pct(s['attainment'])}")
        if kept:
            rate_100 = rate
    if rate_100 is None:
        raise ValueError("no swept rate keeps the paid tiers: sweep lower rates")
    rate = round(rate_100 * level, 4)
    rows = []
    for layout in layouts:
        run = simulate_fleet(layout.policy, replace(load, rate=rate), catalog, fleet, layout.pools)
        s = run.tally.summary()
        rows.append({"layout": layout.name, "policy": layout.policy, "routed": run.routed, **s})
        log(f"{layout.name} ({layout.policy}) at {rate:g} req/s: "
            f"${s['revenue_usd_per_s']:.4f}/s {_pct(s['attainment'])} routed {run.routed}")
    return {"rate_100": rate_100, "level": level, "rate": rate, "sweep": swept, "rows": rows}


def markdown(result: dict, tiers: Sequence[str]) -> str:
    head = "| layout | policy | " + " | ".join(f"{t} attained" for t in tiers)
    lines = [head + " | revenue $/s | requests per engine |", "|---" * (len(tiers) + 4) + "|"]
    for row in result["rows"]:
        att = row["attainment"]
        cells = [f"{att[t]:.1%}" if t in att else "-" for t in tiers]
        lines.append(
            f"| {row['layout']} | {row['policy']} | " + " | ".join(cells)
            + f" | {row['revenue_usd_per_s']:.4f} | {', '.join(map(str, row['routed']))} |"
        )
    return "\n".join(lines)


def _pct(attainment: Mapping[str, float]) -> str:
    return " ".join(f"{t}={v:.1%}" for t, v in attainment.items())


def main(
    engines: Annotated[int, typer.Option(min=2, help="Simulated engines (GPUs)")] = 8,
    high_pool: Annotated[
        str, typer.Option(help="Sizes of the paced tiers' pool to try, e.g. 1,2")
    ] = "1,2",
    sweep: Annotated[
        str, typer.Option(help="fcfs rates (req/s, all engines) to find the mixed pool's 100%")
    ] = "60,80,100,120,140",
    level: Annotated[float, typer.Option(help="Load as a share of that 100%")] = 1.5,
    duration: Annotated[float, typer.Option(help="Seconds of arrivals per run")] = 20.0,
    mix: Annotated[str, typer.Option(help="Tier mix")] = "free=0.4,standard=0.3,high=0.2",
    input_len: Annotated[str, typer.Option(help="Prompt lengths")] = "lognormal:512,0.6",
    output_len: Annotated[str, typer.Option(help="Output lengths")] = "lognormal:256,0.5",
    seed: Annotated[int, typer.Option(help="Arrival seed")] = 0,
    preset: Annotated[str, typer.Option(help="The tiers' preset")] = "gpu",
    cost: Annotated[str, typer.Option(help="Step costs (data/step_costs.toml)")] = "h200-llama-8b",
    prior: Annotated[str, typer.Option(help="The probe's step costs")] = "h200-llama-8b-probe",
    max_num_seqs: Annotated[int, typer.Option(min=1)] = 256,
    num_blocks: Annotated[int, typer.Option(min=1, help="KV blocks of 16 tokens")] = 65536,
    out: Annotated[Path | None, typer.Option(help="Write the result as JSON here")] = None,
) -> None:
    """Tier pools vs one mixed pool of simulated engines behind the fleet's router."""
    try:
        sizes = [int(x) for x in high_pool.split(",") if x.strip()]
        rates = [float(x) for x in sweep.split(",") if x.strip()]
    except ValueError:
        raise typer.BadParameter("--high-pool and --sweep take comma-separated numbers") from None
    catalog = load_tiers(None, preset=preset)
    fleet = FleetSim(engines, cost, prior, max_num_seqs, num_blocks)
    load = SimLoad(0.0, duration, mix, input_len, output_len, seed)
    try:
        result = compare(catalog, fleet, rates, level, sizes, load, log=typer.echo)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    typer.echo(f"100% = {result['rate_100']:g} req/s; runs at {result['rate']:g} req/s")
    typer.echo(markdown(result, ("free", "standard", "high")))
    if out is not None:
        out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    typer.run(main)
