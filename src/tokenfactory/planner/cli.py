"""`tokenfactory plan`: what this hardware can earn, at which tier mix and prices.

An operator's first five minutes:
  1. `tokenfactory plan measure`: time this machine's engine steps, fit its step-time model
  2. `tokenfactory plan frontier --hardware local`: its throughput against speed per user
  3. `tokenfactory plan revenue --hardware local --demand free=2,standard=1`: what a tier mix earns
Other chips come as presets (`tokenfactory plan hardware`); `plan fleet` sizes a fleet.
"""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

plan_app = typer.Typer(
    help=(
        "What this hardware can earn, at which tier mix and prices (the `plan` extra).\n\n"
        "An operator's first five minutes: `tokenfactory plan measure` times this machine's "
        "engine steps and fits its step-time model; `tokenfactory plan frontier --hardware "
        "local` draws its throughput against speed per user, with the tiers' promises on it; "
        "`tokenfactory plan revenue --hardware local --demand free=2,standard=1` finds the tier "
        "mix that earns most and checks it on the real scheduler in the simulator. Other chips "
        "are presets (`tokenfactory plan hardware`: cpu, h100, h200, b200); `tokenfactory plan "
        "fleet` sizes the chips a demand needs."
    ),
    no_args_is_help=True,
)
out = Console()
err = Console(stderr=True)

ModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model",
        "-m",
        help="Model shape: smollm2-135m (embedded), llama-3.1-8b, ... (default: the one "
        "measured for local, the embedded one on cpu, llama-3.1-8b on a GPU)",
    ),
]
HardwareOpt = Annotated[
    str, typer.Option("--hardware", help="cpu, h100, h200, b200, or local (`plan measure`)")
]
WeightsOpt = Annotated[str, typer.Option(help="Weight format: bf16 or fp8")]
KvOpt = Annotated[str, typer.Option("--kv", help="KV-cache format: bf16 (the engine's) or fp8")]
AcceptOpt = Annotated[
    float | None,
    typer.Option(
        "--speculation-acceptance",
        min=0.0,
        max=1.0,
        help="Share of draft tokens accepted (0-1): adds the speculative frontier",
    ),
]
InputOpt = Annotated[
    str | None,
    typer.Option(help="Prompt lengths: N, MIN..MAX or lognormal:MEAN,SIGMA (default per chip)"),
]
OutputOpt = Annotated[str | None, typer.Option(help="Completion lengths (same forms)")]
TiersOpt = Annotated[
    Path | None, typer.Option(help="Tiers TOML file (default: shipped), its chip's preset")
]
CalibrationOpt = Annotated[
    Path | None, typer.Option(help="With --hardware local: the calibration file to read")
]
DemandOpt = Annotated[
    str, typer.Option(help="Requests/s per tier, e.g. free=2,standard=1,high=0.5")
]
PolicyOpt = Annotated[str, typer.Option(help="Scheduling policy the simulator runs")]
TargetOpt = Annotated[
    float, typer.Option(min=0.0, max=1.0, help="Share of promises every paid tier must keep")
]
DurationOpt = Annotated[
    float | None,
    typer.Option(min=1.0, help="Seconds of simulated arrivals per check (CPU 60, GPU 30)"),
]
SeedsOpt = Annotated[str, typer.Option(help="Arrival seeds of the simulated checks, pooled")]
JsonOpt = Annotated[Path | None, typer.Option("--json", help="Also write the result as JSON")]


@plan_app.callback()
def _plan_needs_its_extra() -> None:
    from tokenfactory.planner.extra import INSTALL, missing_plan_modules

    missing = missing_plan_modules()
    if missing:
        err.print(
            f"[red]error:[/red] tokenfactory plan needs {', '.join(missing)}, from the plan "
            f"extra: {escape(INSTALL)}",
            soft_wrap=True,
        )
        raise typer.Exit(2)


def _fail(message: str) -> typer.Exit:
    err.print(f"[red]error:[/red] {escape(message)}", soft_wrap=True)
    return typer.Exit(2)


def _setup(
    model: str | None,
    hardware_name: str,
    weights: str,
    input_len: str | None,
    output_len: str | None,
    tiers: Path | None,
    calibration: Path | None,
    kv: str = "bf16",
    efficiencies: tuple[float | None, float | None] = (None, None),
) -> tuple[Any, Any, Any, Any]:
    """The machine, its workload, the lengths and the tiers; a clear error for bad input."""
    from tokenfactory.planner.demand import PREFILL_CHUNK, DemandError, lengths_for
    from tokenfactory.planner.frontier import Machine
    from tokenfactory.planner.hardware import UnknownHardwareError, default_model, hardware
    from tokenfactory.planner.shapes import UnknownModelError, model_shape
    from tokenfactory.tiers import TierError, load_tiers

    try:
        hw = hardware(hardware_name, calibration)
        if model is None:
            model = default_model(hardware_name, hw.tier_preset, calibration)
        shape = model_shape(model, weights, kv)
        catalog = load_tiers(tiers, preset=hw.tier_preset)
        lengths = lengths_for(hw.tier_preset, input_len, output_len)
    except (UnknownHardwareError, UnknownModelError, TierError, DemandError) as exc:
        raise _fail(str(exc)) from None
    memory_eff, compute_eff = efficiencies
    if memory_eff is not None or compute_eff is not None:  # a what-if on the fitted model
        params = replace(
            hw.params,
            memory_efficiency=memory_eff or hw.params.memory_efficiency,
            kv_efficiency=memory_eff or hw.params.kv_efficiency,
            compute_efficiency=compute_eff or hw.params.compute_efficiency,
        )
        hw = replace(hw, params=params)
    workload = lengths.workload(PREFILL_CHUNK.get(hw.tier_preset, 2048))
    machine = Machine(shape, hw, weights)
    if machine.max_batch(workload) < 1:
        raise _fail(
            f"{shape.name} ({weights}) with these lengths does not fit in {hw.name}'s "
            f"{hw.memory_gb:g} GB"
        )
    return machine, workload, lengths, catalog


def _seeds(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(x) for x in text.split(","))
    except ValueError:
        values = ()
    if not values or any(v < 0 for v in values):
        raise _fail(f"--seeds expects whole numbers >= 0 separated by commas, got {text!r}")
    return values


def _policy(name: str) -> str:
    from tokenfactory.scheduling.policy import known_policies

    if name not in known_policies():
        raise _fail(f"unknown policy {name!r}; known: {', '.join(known_policies())}")
    return name


def _write_json(path: Path | None, doc: dict) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2, default=str))
    err.print(f"wrote {path}")


def _describe(machine: Any, workload: Any) -> dict:
    hw = machine.hardware
    return {
        "model": machine.shape.name,
        "weights": machine.weights,
        "kv_bytes_per_token": machine.shape.kv_bytes_per_token,
        "hardware": hw.name,
        "hardware_description": hw.description,
        "hardware_sources": list(hw.sources),
        "power_w": hw.power_w,
        "step_model": asdict(hw.params),
        "mean_input_tokens": workload.input_tokens,
        "mean_output_tokens": workload.output_tokens,
        "max_batch": machine.max_batch(workload),
    }


@plan_app.command("hardware")
def hardware_list() -> None:
    """The hardware presets: peak rates, power, fitted efficiencies and their sources."""
    from tokenfactory.planner.hardware import presets

    table = Table(title="hardware presets (data/hardware.toml)")
    for col in ("name", "GB/s", "bf16 TFLOP/s", "fp8 TFLOP/s", "GB", "W", "weights eff",
                "KV eff", "flop eff"):
        table.add_column(col, justify="right")
    for hw in presets().values():
        p = hw.params
        table.add_row(
            hw.name, f"{hw.memory_bandwidth_gbs:g}", f"{hw.bf16_tflops:g}", f"{hw.fp8_tflops:g}",
            f"{hw.memory_gb:g}", f"{hw.power_w:g}", f"{p.memory_efficiency:.2f}",
            f"{p.kv_share:.2f}", f"{p.compute_efficiency:.2f}",
        )
    out.print(table)
    for hw in presets().values():
        out.print(f"[bold]{hw.name}[/bold]: {escape(hw.description)}")
        for s in hw.sources:
            out.print(f"  - {escape(s)}", soft_wrap=True)


@plan_app.command("frontier")
def frontier_command(
    model: ModelOpt = None,
    hardware_name: HardwareOpt = "h200",
    weights: WeightsOpt = "bf16",
    kv: KvOpt = "bf16",
    speculation_acceptance: AcceptOpt = None,
    input_len: InputOpt = None,
    output_len: OutputOpt = None,
    out_dir: Annotated[Path, typer.Option("--out", help="Plot and JSON go here")] = Path(
        "plan-results/frontier"
    ),
    tiers: TiersOpt = None,
    calibration: CalibrationOpt = None,
    memory_efficiency: Annotated[
        float | None,
        typer.Option(
            min=0.01, max=1.0,
            help="What if: share of peak bandwidth, weights and KV (default: fitted)",
        ),
    ] = None,
    compute_efficiency: Annotated[
        float | None,
        typer.Option(min=0.01, max=1.0, help="What if: share of peak FLOP rate (default: fitted)"),
    ] = None,
) -> None:
    """Tokens/s per chip and per megawatt against tokens/s per user, over batch sizes (and
    draft depths), with each tier placed at the most throughput that keeps its promise."""
    from tokenfactory.planner.frontier import frontier, place_tiers
    from tokenfactory.planner.plot import plot_frontier
    from tokenfactory.planner.references import for_model

    machine, workload, _lengths, catalog = _setup(
        model, hardware_name, weights, input_len, output_len, tiers, calibration, kv,
        (memory_efficiency, compute_efficiency),
    )
    hw = machine.hardware
    curves = {"plain": frontier(machine, workload)}
    if speculation_acceptance is not None:
        curves[f"drafts a={speculation_acceptance:g}"] = frontier(
            machine, workload, speculation_acceptance
        )
    placements = {
        name: place_tiers(points, catalog, workload, hw.power_w) for name, points in curves.items()
    }
    refs = for_model(machine.shape.name)
    doc = _describe(machine, workload) | {
        "schema": "tokenfactory.plan.frontier/1",
        "curves": {name: [asdict(p) for p in pts] for name, pts in curves.items()},
        "tiers": {name: [asdict(t) for t in ts] for name, ts in placements.items()},
        "references": [asdict(r) for r in refs],
    }
    for name, ts in placements.items():
        table = Table(
            title=f"{machine.shape.name} ({weights}) on {hw.name}, {name}: mean prompt "
            f"{workload.input_tokens:.0f}, completion {workload.output_tokens:.0f} tokens"
        )
        for col in ("tier", "promise", "batch", "drafts", "tok/s/user", "tok/s", "tok/s/MW",
                    "$/hour"):
            table.add_column(col, justify="right")
        for t in ts:
            p = t.point
            table.add_row(
                t.tier, f"{t.promise_tokens_per_s:g}",
                *(("-", "-", "out of reach", "-", "-") if p is None else (
                    str(p.batch), str(p.draft_tokens), f"{p.tokens_per_s_per_user:.1f}",
                    _si(p.tokens_per_s), _si(p.tokens_per_s_per_mw),
                )),
                _si(t.usd_per_hour),
            )
        out.print(table)
    best = max(curves["plain"], key=lambda p: p.tokens_per_s)
    out.print(
        f"most throughput: {best.tokens_per_s:,.0f} output tokens/s at batch {best.batch} "
        f"({best.tokens_per_s_per_user:.1f} tokens/s per user)"
    )
    for r in refs:
        out.print(
            f"published: {escape(r.label)}: {r.output_tokens_per_s:,.0f} ({escape(r.workload)})"
        )
    kv_part = "" if kv == "bf16" else f"-kv-{kv}"
    # BASE.png, BASE.svg, BASE.json
    base = out_dir / f"frontier-{machine.shape.name}-{hw.name}-{weights}{kv_part}"
    title = (
        f"{machine.shape.name} ({weights}) on {hw.name}, prompt {workload.input_tokens:.0f} / "
        f"completion {workload.output_tokens:.0f} tokens"
    )
    refs_drawn = [(r.label, r.output_tokens_per_s) for r in refs]
    for path in plot_frontier(title, curves, placements["plain"], refs_drawn, base):
        err.print(f"wrote {path}")
    _write_json(base.parent / f"{base.name}.json", doc)


def _si(x: float) -> str:
    """1234 -> 1.23k, 15200000 -> 15.2M."""
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.3g}{unit}"
    return f"{x:.3g}"


def _offers(machine: Any, workload: Any, catalog: Any, acceptance: float | None) -> Any:
    from tokenfactory.planner.revenue import offers

    return offers(machine, workload, catalog, acceptance)


def _demand(text: str, catalog: Any) -> dict[str, float]:
    from tokenfactory.planner.demand import DemandError, parse_demand

    try:
        return parse_demand(text, catalog)
    except DemandError as exc:
        raise _fail(str(exc)) from None


def _check_table(title: str, shares: Any, check: Any) -> Table:
    table = Table(title=title)
    for col in ("tier", "demand req/s", "taken req/s", "share", "batch", "tok/s/user",
                "planned $/h", "simulated kept"):
        table.add_column(col, justify="right")
    for s in shares:
        kept = check.attainment.get(s.tier)
        table.add_row(
            s.tier, f"{s.demand_rps:g}", f"{s.served_rps:.3g}", f"{s.chip_share:.0%}",
            "-" if s.point is None else str(s.point.batch),
            "-" if s.point is None else f"{s.point.tokens_per_s_per_user:.1f}",
            f"{s.usd_per_hour:,.2f}", "-" if kept is None else f"{kept:.1%}",
        )
    return table


@plan_app.command("revenue")
def revenue_command(
    demand: DemandOpt,
    model: ModelOpt = None,
    hardware_name: HardwareOpt = "h200",
    weights: WeightsOpt = "bf16",
    speculation_acceptance: AcceptOpt = None,
    input_len: InputOpt = None,
    output_len: OutputOpt = None,
    policy: PolicyOpt = "tier",
    target: TargetOpt = 0.99,
    duration: DurationOpt = None,
    seeds: SeedsOpt = "0",
    tiers: TiersOpt = None,
    calibration: CalibrationOpt = None,
    json_out: JsonOpt = None,
) -> None:
    """Revenue per hour and per megawatt of one chip: the tier mix that earns most (a linear
    program over requests/s taken per tier), checked on the simulator running the real
    scheduling policy, and derated until every paid tier keeps --target of its promises."""
    from tokenfactory.planner.validate import validated_mix

    machine, workload, lengths, catalog = _setup(
        model, hardware_name, weights, input_len, output_len, tiers, calibration
    )
    asked = _demand(demand, catalog)
    run_s = duration or (60.0 if machine.hardware.tier_preset == "cpu" else 30.0)
    offered = _offers(machine, workload, catalog, speculation_acceptance)
    try:
        got = validated_mix(
            machine, workload, lengths, catalog, offered, asked, target, _policy(policy),
            run_s, _seeds(seeds), speculation_acceptance,
        )
    except ValueError as exc:
        raise _fail(str(exc)) from None
    hw = machine.hardware
    out.print(_check_table(
        f"as solved: {got.first.usd_per_hour:,.2f} $/hour; simulated ({policy}): "
        f"{got.first_check.usd_per_hour:,.2f} $/hour", got.first.shares, got.first_check,
    ))
    if got.scale < 1.0:
        out.print(_check_table(
            f"derated to {got.scale:.0%} of the modelled capacity: {got.plan.usd_per_hour:,.2f} "
            f"$/hour; simulated: {got.check.usd_per_hour:,.2f} $/hour",
            got.plan.shares, got.check,
        ))
    verdict = "keeps" if got.met else "does NOT keep"
    out.print(
        f"{machine.shape.name} ({weights}) on one {hw.name}: {got.check.usd_per_hour:,.2f} "
        f"$/hour simulated, {got.check.usd_per_hour / (hw.power_w / 1e6):,.0f} $/hour per MW; "
        f"the plan {verdict} {target:.0%} of every paid tier's promises taken "
        f"(requests not taken are not served)"
    )
    _write_json(json_out, _describe(machine, workload) | {
        "schema": "tokenfactory.plan.revenue/1",
        "demand_rps": asked,
        "target": target,
        "policy": policy,
        "solved": asdict(got.first),
        "solved_simulated": asdict(got.first_check),
        "plan": asdict(got.plan),
        "simulated": asdict(got.check),
        "derating": got.scale,
        "met": got.met,
    })


@plan_app.command("fleet")
def fleet_command(
    demand: DemandOpt,
    model: ModelOpt = None,
    hardware_name: HardwareOpt = "h200",
    weights: WeightsOpt = "bf16",
    speculation_acceptance: AcceptOpt = None,
    input_len: InputOpt = None,
    output_len: OutputOpt = None,
    policy: PolicyOpt = "tier",
    target: TargetOpt = 0.99,
    duration: DurationOpt = None,
    seeds: SeedsOpt = "0",
    tiers: TiersOpt = None,
    calibration: CalibrationOpt = None,
    json_out: JsonOpt = None,
) -> None:
    """Chips of one kind that serve the demand with every paid tier at --target of its
    promises: a pool per tier, each pool's per-chip load checked on the simulator."""
    from tokenfactory.planner.fleet import plan_fleet

    machine, workload, lengths, catalog = _setup(
        model, hardware_name, weights, input_len, output_len, tiers, calibration
    )
    asked = _demand(demand, catalog)
    run_s = duration or (60.0 if machine.hardware.tier_preset == "cpu" else 30.0)
    offered = _offers(machine, workload, catalog, speculation_acceptance)
    fleet = plan_fleet(
        machine, workload, lengths, catalog, offered, asked, target, _policy(policy), run_s,
        _seeds(seeds), speculation_acceptance,
    )
    hw = machine.hardware
    table = Table(title=f"{machine.shape.name} ({weights}) on {hw.name}: a pool per tier")
    for col in ("tier", "demand req/s", "chips", "req/s per chip", "of capacity",
                "simulated kept", "$/hour"):
        table.add_column(col, justify="right")
    for p in fleet.pools:
        if not p.reachable and p.demand_rps > 0:
            table.add_row(p.tier, f"{p.demand_rps:g}", "-", "-", "-", "out of reach", "-")
            continue
        kept = None if p.check is None else p.check.attainment.get(p.tier)
        table.add_row(
            p.tier, f"{p.demand_rps:g}", str(p.chips), f"{p.per_chip_rps:.3g}",
            f"{p.scale:.0%}" if p.chips else "-", "-" if kept is None else f"{kept:.1%}",
            f"{p.usd_per_hour:,.2f}",
        )
    out.print(table)
    unreachable = [p.tier for p in fleet.pools if not p.reachable and p.demand_rps > 0]
    out.print(
        f"{fleet.chips} x {hw.name} ({fleet.power_w / 1e3:,.1f} kW of chips): "
        f"{fleet.usd_per_hour:,.2f} $/hour simulated, {fleet.usd_per_hour_per_mw:,.0f} $/hour "
        f"per MW"
        + (f"; out of this chip's reach: {', '.join(unreachable)}" if unreachable else "")
        + ("" if all(p.met for p in fleet.pools if p.check is not None) else
           f"; some pool misses {target:.0%} even at the lightest load tried")
    )
    _write_json(json_out, _describe(machine, workload) | {
        "schema": "tokenfactory.plan.fleet/1",
        "demand_rps": asked,
        "policy": policy,
        "fleet": asdict(fleet),
    })


@plan_app.command("simulate")
def simulate_command(
    rate: Annotated[float, typer.Option(min=0.0, help="Requests/s (Poisson arrivals)")],
    mix: Annotated[
        str, typer.Option(help="Tier shares, as `bench policies` takes them")
    ] = "free=0.4,standard=0.3,high=0.2,ultra=0.08,super=0.02",
    model: ModelOpt = None,
    hardware_name: HardwareOpt = "cpu",
    weights: WeightsOpt = "bf16",
    input_len: InputOpt = None,
    output_len: OutputOpt = None,
    policy: PolicyOpt = "tier",
    duration: Annotated[float, typer.Option(min=1.0, help="Seconds of arrivals")] = 60.0,
    seeds: SeedsOpt = "0",
    max_num_seqs: Annotated[
        int, typer.Option(min=1, help="Sequences per step (the server's default: 256)")
    ] = 256,
    tiers: TiersOpt = None,
    calibration: CalibrationOpt = None,
    json_out: JsonOpt = None,
) -> None:
    """One load on one simulated chip whose steps take what the planner's model says: the
    twin of a `tokenfactory bench policies` point (same rate, mix, lengths and seeds)."""
    from tokenfactory.bench.serve.tiers_info import parse_mix
    from tokenfactory.planner.validate import simulate_mix

    machine, workload, lengths, catalog = _setup(
        model, hardware_name, weights, input_len, output_len, tiers, calibration
    )
    try:
        unknown = [t for t in parse_mix(mix) if t not in catalog]
    except ValueError as exc:
        raise _fail(str(exc)) from None
    if unknown:
        raise _fail(f"unknown tier {unknown[0]!r} in --mix; known: {', '.join(catalog.names)}")
    if rate <= 0:
        raise _fail("--rate must be > 0")
    check = simulate_mix(
        machine, workload, lengths, catalog, rate, mix, _policy(policy), duration,
        _seeds(seeds), max_num_seqs,
    )
    table = Table(title=f"{rate:g} requests/s, {policy}, {duration:g} s, seeds {seeds}")
    for col in ("tier", "promises kept"):
        table.add_column(col, justify="right")
    for tier in catalog.names:
        if tier in check.attainment:
            table.add_row(tier, f"{check.attainment[tier]:.1%}")
    out.print(table)
    fit = check.step_fit
    out.print(
        f"revenue {check.usd_per_hour:,.4f} $/hour, {check.output_tokens_per_s:,.1f} output "
        f"tokens/s; errors {check.errors or 'none'}; step costs {fit.cost} (the line is "
        f"within {fit.median_error:.1%} of the model, median)"
    )
    _write_json(json_out, _describe(machine, workload) | {
        "schema": "tokenfactory.plan.simulate/1", "simulated": asdict(check),
    })


@plan_app.command("offline")
def offline_command(
    bench_json: Annotated[
        Path, typer.Option(help="A `tokenfactory bench engine` JSON result with its offline part")
    ],
    model: ModelOpt = None,
    hardware_name: HardwareOpt = "cpu",
    weights: WeightsOpt = "bf16",
    max_num_seqs: Annotated[int, typer.Option(min=1, help="The run's max_num_seqs")] = 512,
    calibration: CalibrationOpt = None,
) -> None:
    """The offline run of a `bench engine` result as the planner's model predicts it: the same
    number of requests, lengths drawn from the same ranges, all queued at once."""
    import random

    from tokenfactory.planner.offline import offline_run

    try:
        doc = json.loads(bench_json.read_text())
        measured = doc["offline"]
        opts = doc["options"]
        (i0, i1), (o0, o1) = opts["input_len"], opts["output_len"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise _fail(f"{bench_json} holds no offline run of `bench engine`: {exc}") from None
    machine, _workload, _lengths, _catalog = _setup(
        model, hardware_name, weights, None, None, None, calibration
    )
    rng = random.Random(opts.get("seed", 0))
    requests = [(rng.randint(i0, i1), rng.randint(o0, o1)) for _ in range(measured["num_requests"])]
    est = offline_run(machine, requests, max_num_seqs)
    got, want = est.output_tokens_per_s, measured["output_tokens_per_s"]
    out.print(
        f"{measured['num_requests']} requests, prompts {i0}..{i1}, outputs {o0}..{o1}: "
        f"predicted {got:,.1f} output tokens/s ({est.steps} steps, {est.elapsed_s:.1f} s), "
        f"measured {want:,.1f} ({got / want - 1:+.1%}) on {doc.get('machine', '?')}"
    )


@plan_app.command("calibrate")
def calibrate_command(
    sweep: Annotated[
        str | None, typer.Option(help="A shipped sweep (data/hardware_sweeps.toml)")
    ] = None,
    bench_json: Annotated[
        Path | None, typer.Option(help="A `tokenfactory bench engine` JSON result instead")
    ] = None,
    probe: Annotated[
        Path | None,
        typer.Option(help="A capacity-probe cache instead (capacity-*.json, `serve`'s data dir)"),
    ] = None,
    step_log: Annotated[
        list[Path] | None,
        typer.Option(
            help="A served engine's step log instead (`serve --step-log`; repeat to pool "
            "runs): steps under real load, the time between busy steps included"
        ),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            "--model", "-m", help="With --bench-json, --probe or --step-log: the model shape"
        ),
    ] = None,
    hardware_name: Annotated[
        str | None,
        typer.Option(
            "--hardware",
            help="With --bench-json, --probe or --step-log: this preset's peak rates (local: "
            "this machine's calibration)",
        ),
    ] = None,
    calibration: CalibrationOpt = None,
    statistic: Annotated[
        str, typer.Option(help="With --bench-json: median or min step of each batch")
    ] = "median",
    hold_out: Annotated[str, typer.Option(help="Held out in turn: batch or context")] = "batch",
    check: Annotated[
        list[str] | None,
        typer.Option(help="Shipped sweeps (or bench JSON files) predicted by the full fit"),
    ] = None,
    write: Annotated[
        Path | None,
        typer.Option(
            help="Save the fit as a calibration for `--hardware local --calibration FILE` "
            "(the hardware's peaks, these fitted costs)"
        ),
    ] = None,
) -> None:
    """Fit the step-time model to measured steps and print how well it predicts the steps it
    was not fitted on (each batch size, or each context, held out in turn)."""
    from tokenfactory.planner.calibrate import fit_report
    from tokenfactory.planner.hardware import UnknownHardwareError, hardware
    from tokenfactory.planner.measurements import (
        Sweep,
        samples_from_bench,
        samples_from_probe,
        shipped_sweeps,
    )
    from tokenfactory.planner.perf_model import Peak, relative_errors
    from tokenfactory.planner.shapes import UnknownModelError, model_shape

    def load_json(path: Path, name: str, hw: str, mdl: str) -> Sweep:
        try:
            doc = json.loads(path.read_text())
            if "points" in doc and "ttft_s" in doc:
                samples = samples_from_probe(doc)
            else:
                samples = samples_from_bench(doc, statistic)
        except (OSError, ValueError, KeyError) as exc:
            raise _fail(f"cannot read {path}: {exc}") from None
        return Sweep(name, hw, mdl, "bf16", str(path), tuple(samples))

    known = shipped_sweeps()
    logs = step_log or []
    files = [f for f in (bench_json, probe) if f is not None] + ([logs[0]] if logs else [])
    if (sweep is not None) + len(files) != 1:
        raise _fail("give one of --sweep NAME, --bench-json FILE, --probe FILE or --step-log FILE")
    if sweep is not None:
        if sweep not in known:
            raise _fail(f"unknown sweep {sweep!r}; shipped: {', '.join(known)}")
        data = known[sweep]
    else:
        if model is None or hardware_name is None:
            raise _fail("--bench-json, --probe and --step-log need --model and --hardware")
        if logs:
            data = _step_log_sweep(logs, hardware_name, model)
        else:
            data = load_json(files[0], files[0].name, hardware_name, model)
    try:
        hw = hardware(data.hardware, calibration)
        shape = model_shape(data.model, data.weights)
        report = fit_report(
            shape, Peak(hw.bandwidth, hw.flops_per_s(data.weights)), data.samples, hw.params,
            hold_out, fit_prefill_step=bool(logs),
        )
    except (UnknownHardwareError, UnknownModelError, ValueError) as exc:
        raise _fail(str(exc)) from None
    peak = Peak(hw.bandwidth, hw.flops_per_s(data.weights))
    p = report.params
    kept = "per_draft_token_s" if logs else "prefill_step_s and per_draft_token_s"
    out.print(f"[bold]{escape(data.name)}[/bold]: {escape(data.source)}", soft_wrap=True)
    out.print(
        f"fit on all {len(data.samples)} samples: base_s = {p.base_s:.3g}, per_seq_s = "
        f"{p.per_seq_s:.3g}, memory_efficiency = {p.memory_efficiency:.3f}, "
        f"kv_efficiency = {p.kv_share:.3f}, "
        f"compute_efficiency = {p.compute_efficiency:.3f}, prefill_step_s = "
        f"{p.prefill_step_s:.3g} ({kept} kept at {hw.name}'s)"
    )
    table = Table(title=f"each {hold_out} predicted by a fit on the others")
    for col in ("step", "measured ms", "predicted ms", "error"):
        table.add_column(col, justify="right")
    for h in report.held_out:
        table.add_row(h.label, f"{h.measured_s * 1e3:.2f}", f"{h.predicted_s * 1e3:.2f}",
                      f"{h.error:+.1%}")
    out.print(table)
    out.print(f"median absolute held-out error: {report.median_abs_held_out:.1%}")
    for name in check or []:
        if name in known:
            other = known[name]
        else:
            other = load_json(Path(name), name, data.hardware, data.model)
        errors = relative_errors(shape, peak, p, other.samples)
        out.print(
            f"[bold]check on {escape(other.name)}[/bold] ({escape(other.source)})",
            soft_wrap=True,
        )
        for s, e in zip(other.samples, errors, strict=True):
            out.print(f"  {s.label}: measured {s.step_s * 1e3:.2f} ms, predicted "
                      f"{s.step_s * (1 + e) * 1e3:.2f} ms ({e:+.1%})")
        mid = sorted(abs(e) for e in errors)[len(errors) // 2]
        out.print(f"  median absolute error: {mid:.1%}")
    if write is not None:
        from dataclasses import replace

        from tokenfactory.planner.hardware import write_local

        fitted = replace(hw, params=p, sources=(*hw.sources, f"fitted to {data.source}"))
        try:
            write_local(fitted, write, {"shape": data.model, "fitted_to": data.source})
        except OSError as exc:
            raise _fail(f"cannot write {write}: {exc.strerror or exc}") from None
        out.print(f"wrote {write}: `--hardware local --calibration {write}` uses it")


def _step_log_sweep(paths: list[Path], hardware_name: str, model: str):
    from tokenfactory.planner.measurements import Sweep, samples_from_step_log
    from tokenfactory.scheduling.step_log import StepLogError, read_step_log

    try:
        samples = samples_from_step_log(*(read_step_log(p) for p in paths))
    except (StepLogError, ValueError) as exc:
        raise _fail(str(exc)) from None
    names = ", ".join(str(p) for p in paths)
    label = paths[0].name + (f" and {len(paths) - 1} more" if len(paths) > 1 else "")
    return Sweep(label, hardware_name, model, "bf16", f"step log {names}", tuple(samples))


@plan_app.command("measure")
def measure_command(
    random_weights: Annotated[
        str | None,
        typer.Option(help="A named architecture with random weights (default: embedded)"),
    ] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda or auto")] = "auto",
    batch_sizes: Annotated[str, typer.Option(help="Decode sweep batch sizes")] = "1,2,4,8,16,32",
    contexts: Annotated[str, typer.Option(help="Contexts of the sweep, e.g. 128,512")] = "128,512",
    rounds: Annotated[
        int, typer.Option(min=1, help="Sweeps per context; each batch keeps its fastest median")
    ] = 2,
    power_w: Annotated[
        float | None, typer.Option(min=0.0, help="The machine's power (default: the cpu preset's)")
    ] = None,
    out_path: Annotated[
        Path | None, typer.Option("--out", help="Calibration file (default: the cache's)")
    ] = None,
    threads: Annotated[int | None, typer.Option(help="CPU threads (default: all)")] = None,
) -> None:
    """Time this machine's decode steps (the short engine sweep), fit the step-time model and
    write the calibration `--hardware local` reads."""
    from tokenfactory.planner.measure import measure_here

    try:
        batches = [int(b) for b in batch_sizes.split(",")]
        ctxs = [int(c) for c in contexts.split(",")]
    except ValueError:
        raise _fail("--batch-sizes and --contexts expect whole numbers, comma-separated") from None
    if not batches or min(batches) < 1 or not ctxs or min(ctxs) < 1:
        raise _fail("batch sizes and contexts must be >= 1")
    path = measure_here(random_weights, device, batches, ctxs, rounds, power_w, out_path,
                        threads, err)
    out.print(f"wrote {path}: now `tokenfactory plan frontier --hardware local`")
