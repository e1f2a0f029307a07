"""/metrics for the fleet: each replica's gauges under a `replica` label, read from the
front's view of it at scrape time (so a replica that left leaves no stale series)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from tokenfactory.fleet.client import FleetClient


class FleetCollector(Collector):
    def __init__(self, fleet: FleetClient):
        self._fleet = fleet

    def collect(self) -> Iterator[Metric]:
        p = "tokenfactory_replica"
        lab = ["replica"]
        up = GaugeMetricFamily(f"{p}_up", "1 while the replica takes requests", labels=lab)
        waiting = GaugeMetricFamily(f"{p}_waiting_requests", "Requests queued", labels=lab)
        running = GaugeMetricFamily(f"{p}_running_requests", "Requests running", labels=lab)
        kv = GaugeMetricFamily(f"{p}_kv_cache_usage", "Share of KV blocks in use", labels=lab)
        step = GaugeMetricFamily(
            f"{p}_predicted_step_seconds",
            "The step-time model's cost of a decode step at the replica's batch",
            labels=lab,
        )
        in_flight = GaugeMetricFamily(
            f"{p}_in_flight_requests", "Requests this front has on the replica", labels=lab
        )
        routed = CounterMetricFamily(
            f"{p}_routed_requests", "Requests this front sent the replica", labels=lab
        )
        restarts = CounterMetricFamily(f"{p}_restarts", "Restarts seen", labels=lab)
        info = GaugeMetricFamily(
            f"{p}_info", "Where the replica runs now", labels=["replica", "node", "pid"]
        )
        for r in self._fleet.replicas:
            name = [str(r.index)]
            up.add_metric(name, 1 if r.available else 0)
            in_flight.add_metric(name, r.in_flight)
            routed.add_metric(name, r.routed)
            restarts.add_metric(name, r.restarts)
            s = r.stats
            if s is None:
                continue
            waiting.add_metric(name, s.waiting)
            running.add_metric(name, s.running)
            kv.add_metric(name, s.kv_usage)
            step.add_metric(name, s.predicted_step_s)
            info.add_metric([str(r.index), s.node, str(s.pid)], 1)
        yield from (up, waiting, running, kv, step, in_flight, routed, restarts, info)
