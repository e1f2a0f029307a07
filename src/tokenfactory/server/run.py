"""Start the factory: load the model, open the ledger, measure the hardware, serve HTTP."""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path

import uvicorn
from rich.console import Console

from tokenfactory.billing import Billing, default_data_dir
from tokenfactory.engine.async_engine import AsyncEngine
from tokenfactory.engine.config import EngineConfig
from tokenfactory.engine.engine import Engine
from tokenfactory.engine.health import DEFAULT_MAX_CONSECUTIVE_FAILURES
from tokenfactory.gc_heap import GcPauseWatch, freeze_heap
from tokenfactory.scheduling.step_log import StepLogWriter
from tokenfactory.server.app import create_app
from tokenfactory.server.capacity import load_or_measure
from tokenfactory.server.dashboard import DashboardAccess
from tokenfactory.server.engine_protocol import EngineView
from tokenfactory.server.factory import Factory, FactoryConfig
from tokenfactory.tiers import TierCatalog, load_tiers

log = logging.getLogger(__name__)
_QUANT_SUFFIX = re.compile(r"[.-](Q\d_[A-Z0-9_]+|Q\d_\d|F16|F32|BF16|IQ\d\w*)$", re.IGNORECASE)


@dataclass
class ServeOptions:
    model: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    data_dir: Path | None = None
    database_url: str | None = None
    tiers_file: str | None = None
    tier_preset: str = "auto"  # auto picks by device: gpu on CUDA, cpu otherwise
    served_model_name: list[str] = field(default_factory=list)
    grace_period_s: float = 30.0
    max_step_failures: int = DEFAULT_MAX_CONSECUTIVE_FAILURES  # in a row: the engine is dead
    remeasure: bool = False
    probe_batches: tuple[int, ...] | None = None  # batch sizes the hardware probe measures
    max_waiting: int = 1024
    log_level: str = "info"
    admin_key: str | None = None  # beyond loopback, the dashboard needs it
    engine: EngineConfig = field(default_factory=EngineConfig)
    replicas: int = 1  # above 1: engine replicas on Ray behind this front (tokenfactory.fleet)
    ray_address: str | None = None  # join this Ray cluster instead of starting one
    routing: str = "prefix"  # how the fleet picks a replica: prefix or round-robin
    step_log: Path | None = None  # append every engine step here (JSON lines), for the planner


def served_names(engine: EngineView, requested: list[str]) -> tuple[str, tuple[str, ...]]:
    """The model's public name and aliases: the file name without its quantization suffix."""
    if requested:
        return requested[0], tuple(requested[1:])
    name = engine.model_name
    short = _QUANT_SUFFIX.sub("", name)
    return short, ((name,) if short != name else ())


def pick_preset(preset: str, engine: EngineView) -> str:
    if preset != "auto":
        return preset
    return "gpu" if engine.device.type == "cuda" else "cpu"


def build_factory(
    opts: ServeOptions, console: Console | None = None, engine: Engine | None = None
) -> Factory:
    console = console or Console(stderr=True)
    data_dir = Path(opts.data_dir) if opts.data_dir else default_data_dir()
    if opts.replicas > 1 or opts.ray_address:
        if opts.step_log is not None:
            raise ValueError("--step-log records one engine's steps: serve without --replicas")
        return _build_fleet_factory(opts, console, data_dir)
    # Opened first: a path it cannot write is said before the model loads.
    step_log = StepLogWriter(opts.step_log) if opts.step_log is not None else None
    # The model is loaded, probed and served on the engine's own thread (AsyncEngine.call).
    with console.status("loading model..."):
        async_engine = AsyncEngine(
            engine or (lambda: Engine.from_model_path(opts.model, opts.engine)),
            max_consecutive_failures=opts.max_step_failures,
        )
    engine = async_engine.engine
    catalog: TierCatalog = load_tiers(opts.tiers_file, pick_preset(opts.tier_preset, engine))
    billing = _open_billing(opts, console, catalog, data_dir)
    identity = str(opts.model or "embedded")
    with console.status("measuring what this hardware can promise..."):
        capacity = async_engine.call(
            lambda e: load_or_measure(
                e, data_dir, identity, remeasure=opts.remeasure, batches=opts.probe_batches
            )
        )
        # The scheduler's step-time model starts from what this hardware measured.
        async_engine.call(lambda e: e.set_step_prior(capacity.step_prior()))
    if step_log is not None:  # after the probe: served steps only
        engine.stats.add_sink(step_log)
    name, aliases = served_names(engine, opts.served_model_name)
    factory = Factory(
        engine,
        catalog,
        billing,
        capacity,
        FactoryConfig(name, data_dir, max_waiting=opts.max_waiting, aliases=aliases),
        async_engine,
    )
    _print_tiers(console, factory)
    return factory


def _build_fleet_factory(opts: ServeOptions, console: Console, data_dir: Path) -> Factory:
    """`opts.replicas` engine replicas on Ray behind this process's HTTP front."""
    from tokenfactory.fleet.metrics import FleetCollector
    from tokenfactory.fleet.pools import load_pools
    from tokenfactory.fleet.replica import ReplicaSpec
    from tokenfactory.fleet.router import ROUTING_MODES, RoutingRules
    from tokenfactory.fleet.start import import_ray, start_fleet

    mode = next((m for m in ROUTING_MODES if m == opts.routing), None)
    if mode is None:
        raise ValueError(f"--routing must be one of {', '.join(ROUTING_MODES)}: {opts.routing!r}")
    import_ray()  # a missing extra is said before anything loads
    spec = ReplicaSpec(opts.model, opts.engine, opts.max_step_failures)
    with console.status(f"starting {opts.replicas} engine replica(s) on Ray..."):
        fleet, view = start_fleet(spec, opts.replicas, opts.ray_address)
    try:
        catalog = load_tiers(opts.tiers_file, pick_preset(opts.tier_preset, view))
        pools = load_pools(opts.tiers_file, catalog, opts.replicas)
        fleet.rules = RoutingRules(pools=pools, mode=mode)
        billing = _open_billing(opts, console, catalog, data_dir)
        identity = str(opts.model or "embedded")
        with console.status("measuring what this hardware can promise (one replica)..."):
            # The replicas are identical: one is probed and all start from its figures.
            capacity = fleet.call(
                lambda e: load_or_measure(
                    e, data_dir, identity, remeasure=opts.remeasure, batches=opts.probe_batches
                )
            )
            fleet.set_step_prior(capacity.step_prior())
    except BaseException:
        fleet.shutdown()
        raise
    name, aliases = served_names(view, opts.served_model_name)
    config = FactoryConfig(
        name, data_dir, opts.max_waiting, aliases, tier_pools=dict(fleet.rules.pools)
    )
    factory = Factory(view, catalog, billing, capacity, config, fleet)
    factory.metrics.registry.register(FleetCollector(fleet))
    console.print(
        f"fleet: {opts.replicas} engine replicas, {mode} routing, "
        f"pools {fleet.rules.pools or 'none'}"
    )
    _print_tiers(console, factory)
    return factory


def _open_billing(
    opts: ServeOptions, console: Console, catalog: TierCatalog, data_dir: Path
) -> Billing:
    billing = Billing.open(catalog, opts.database_url, data_dir)
    reconciled = billing.reconcile_open_reservations(catalog)
    if reconciled:
        console.print(f"ledger: settled {reconciled} request(s) left open by an earlier crash")
    keys = billing.bootstrap_local_keys()
    if keys:
        console.print("[bold]First start: one local API key per tier (shown once):[/bold]")
        for tier, raw in keys.items():
            console.print(f"  {tier:<9} {raw}")
        console.print(f"saved, readable only by you, in {data_dir / 'local-keys.json'}")
    return billing


def _print_tiers(console: Console, factory: Factory) -> None:
    cap = factory.capacity
    src = "probe"
    if cap.recheck_step_s is not None:  # from cache, checked at this start
        point = cap.smallest_batch
        src = (
            f"cached probe of {cap.measured_at[:16]}, checked now: a {point.batch}-sequence "
            f"step {cap.recheck_step_s * 1e3:.1f} ms, probed {point.step_s * 1e3:.1f} ms"
        )
    console.print(
        f"capacity ({src}, {cap.machine}): one user {cap.best_speed:.1f} tokens/s, "
        f"idle TTFT {cap.ttft_s:.2f} s for {cap.ttft_prompt_tokens} tokens"
    )
    spec = cap.speculation
    if spec is not None:
        console.print(
            f"speculative decoding ({spec.proposer}, {spec.workload} workload): one user "
            f"{spec.best_speed:.1f} tokens/s, {spec.acceptance:.0%} of draft tokens accepted"
        )
    for status in factory.statuses.values():
        t = status.tier
        mark = (
            "[green]open[/green]"
            if status.available
            else f"[yellow]closed[/yellow] {status.reason}"
        )
        if status.relies_on_speculation:
            mark += " (relies on speculative decoding)"
        console.print(f"  {t.name:<9} {t.tokens_per_s:g} tok/s, TTFT {t.ttft_s:g} s: {mark}")


def serve(opts: ServeOptions) -> None:
    console = Console(stderr=True)
    logging.basicConfig(level=opts.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    sock = _bind(opts.host, opts.port)  # fail fast, before loading anything, on a busy port
    # The engine thread needs the GIL for a moment between torch ops; a short switch interval
    # keeps the event loop's bursts (a step's worth of chunks) from stalling the model.
    sys.setswitchinterval(0.001)
    factory = build_factory(opts, console)
    app = create_app(factory, DashboardAccess(opts.host, opts.admin_key))
    # What start-up built lives as long as the process: exempt it from collections (a full
    # one over it stops the engine for 160-190 ms here; see gc_heap).
    factory.metrics.gc_frozen_objects.set(freeze_heap())
    # Collections come many times a second under load: look the histogram's children up once.
    pauses = {gen: factory.metrics.gc_pause.labels(str(gen)) for gen in range(3)}
    gc_watch = GcPauseWatch(on_pause=lambda gen, s: pauses[gen].observe(s)).install()
    config = uvicorn.Config(
        app,
        log_level=opts.log_level,
        timeout_graceful_shutdown=int(opts.grace_period_s),
        access_log=False,
    )
    server = _FactoryServer(config, factory, opts.grace_period_s)
    console.print(
        f"[bold]tokenfactory[/bold] serving [bold]{factory.model_label}[/bold] on "
        f"http://{opts.host}:{sock.getsockname()[1]}/v1, scheduling policy "
        f"{factory.engine.scheduler.policy.name}  (Ctrl-C stops; in-flight requests "
        f"get {opts.grace_period_s:g} s to finish and are all settled)"
    )
    console.print(_dashboard_line(opts, sock.getsockname()[1]))
    try:
        asyncio.run(server.serve(sockets=[sock]))
    finally:
        gc_watch.remove()


def _dashboard_line(opts: ServeOptions, port: int) -> str:
    access = DashboardAccess(opts.host, opts.admin_key)
    host = f"[{opts.host}]" if ":" in opts.host else opts.host
    if access.open:
        return f"dashboard: http://{host}:{port}/dashboard"
    if opts.admin_key is None:
        return "dashboard: off beyond loopback until --admin-key (or TOKENFACTORY_ADMIN_KEY) is set"
    return f"dashboard: http://{host}:{port}/dashboard?key=<admin key>"


class _FactoryServer(uvicorn.Server):
    """uvicorn, plus: on a stop signal, in-flight requests end cleanly inside the grace period.

    Without this, uvicorn cancels whatever is still streaming when the grace period runs out;
    here the factory aborts those requests just before, so each stream ends with an error event
    and every request is settled by its own handler.
    """

    def __init__(self, config: uvicorn.Config, factory: Factory, grace_s: float):
        super().__init__(config)
        self.factory = factory
        self.grace_s = grace_s
        self._abort_scheduled = False

    def handle_exit(self, sig, frame) -> None:
        self.factory.stop_accepting()
        if not self._abort_scheduled:
            self._abort_scheduled = True
            loop = asyncio.get_event_loop()
            loop.call_soon_threadsafe(
                loop.call_later, max(0.0, self.grace_s * 0.8 - 0.2), self.factory.abort_in_flight
            )
        super().handle_exit(sig, frame)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock
