"""Start the fleet: join or start a Ray cluster, place one engine replica per actor, and
wait until every replica has loaded the model."""

from __future__ import annotations

import logging
import math
import os
import signal
from dataclasses import replace
from typing import Any

from tokenfactory.fleet.client import FleetClient
from tokenfactory.fleet.errors import FleetUnavailableError
from tokenfactory.fleet.messages import EngineDescription
from tokenfactory.fleet.replica import EngineReplica, ReplicaSpec
from tokenfactory.fleet.router import RoutingRules
from tokenfactory.fleet.view import FleetView

log = logging.getLogger(__name__)
INSTALL_HINT = "pip install 'tokenfactory[fleet]'"


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise FleetUnavailableError(
            f"--replicas needs Ray (the fleet extra): {INSTALL_HINT}"
        ) from None
    return ray


def start_fleet(
    spec: ReplicaSpec,
    replicas: int,
    ray_address: str | None = None,
    rules: RoutingRules | None = None,
) -> tuple[FleetClient, FleetView]:
    """`replicas` engine actors behind a `FleetClient`. A replica takes a GPU of its own
    where the cluster has GPUs; on CPUs the cores are split between the replicas on a node
    unless `spec.engine.num_threads` says how many each gets."""
    if replicas < 1:
        raise ValueError("replicas must be at least 1")
    ray = import_ray()
    started_here = ray_address is None
    # Ray sets its own SIGTERM handler on the driver; the server's graceful stop needs ours.
    sigterm = signal.getsignal(signal.SIGTERM)
    try:
        if started_here:
            cores = os.cpu_count() or 1
            ray.init(
                num_cpus=max(cores, replicas * (spec.engine.num_threads or 1)),
                include_dashboard=False,
                log_to_driver=False,
                configure_logging=False,
            )
        else:
            ray.init(address=ray_address, log_to_driver=False, configure_logging=False)
    except Exception as exc:
        where = ray_address or "a local Ray instance"
        raise FleetUnavailableError(f"cannot start or join {where}: {exc}") from None
    finally:
        signal.signal(signal.SIGTERM, sigterm)
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    use_gpu = gpus >= 1 and spec.engine.device != "cpu"
    threads = spec.engine.num_threads
    if not use_gpu and threads is None:
        threads = _threads_each(ray, replicas)
        spec = replace(spec, engine=replace(spec.engine, num_threads=threads))
    # Ray would wait forever for a place to put a replica that does not fit: say so now.
    if use_gpu and replicas > gpus:
        ray.shutdown()
        raise FleetUnavailableError(
            f"{replicas} replicas need a GPU each; the cluster has {gpus} "
            "(fewer --replicas, more nodes, or --device cpu)"
        )
    cpus = int(resources.get("CPU", 0))
    if not use_gpu and replicas * (threads or 1) > cpus:
        ray.shutdown()
        raise FleetUnavailableError(
            f"{replicas} replicas of {threads} threads need {replicas * (threads or 1)} CPUs; "
            f"the cluster has {cpus} (fewer --replicas or --threads)"
        )
    actor = ray.remote(EngineReplica).options(
        num_cpus=0 if use_gpu else threads,
        num_gpus=1 if use_gpu else 0,
        max_restarts=-1,  # a replica that dies comes back
        max_task_retries=0,  # its streams end instead: the front decides what to retry
        max_concurrency=1024,
    )
    log.info(
        "starting %d engine replicas (%s)",
        replicas,
        "one GPU each" if use_gpu else f"{threads} threads each",
    )
    actors = [actor.remote(spec) for _ in range(replicas)]
    try:
        descriptions: list[EngineDescription] = ray.get([a.describe.remote() for a in actors])
    except Exception as exc:
        for a in actors:
            ray.kill(a, no_restart=True)
        raise FleetUnavailableError(f"an engine replica failed to start: {exc}") from None
    fleet = FleetClient(actors, rules, on_shutdown=ray.shutdown if started_here else None)
    return fleet, FleetView(descriptions[0], fleet)


def _threads_each(ray: Any, replicas: int) -> int:
    """Each replica's share of a node's cores, with replicas spread evenly over the nodes."""
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if not nodes:
        return 1
    cores = min(int(n.get("Resources", {}).get("CPU", 1)) for n in nodes)
    per_node = math.ceil(replicas / len(nodes))
    return max(1, cores // per_node)
