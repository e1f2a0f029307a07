"""Prometheus metrics for one factory: requests, tokens, revenue, latencies, engine gauges.

Each `FactoryMetrics` owns its registry (no global state), so several servers in one process
(the tests) never collide. Labels are model, tier and outcome only: never keys or accounts.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


class FactoryMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        mt = ["model", "tier"]
        self.requests = Counter(
            "tokenfactory_requests", "Requests by outcome", [*mt, "outcome"], registry=r
        )
        self.prompt_tokens = Counter(
            "tokenfactory_prompt_tokens", "Prompt tokens billed", mt, registry=r
        )
        self.cached_tokens = Counter(
            "tokenfactory_cached_tokens",
            "Prompt tokens served from the prefix cache",
            mt,
            registry=r,
        )
        self.completion_tokens = Counter(
            "tokenfactory_completion_tokens", "Completion tokens delivered", mt, registry=r
        )
        self.revenue = Counter(
            "tokenfactory_revenue_micro_usd",
            "Revenue billed (micro-dollars), by tier delivered",
            mt,
            registry=r,
        )
        self.promise_misses = Counter(
            "tokenfactory_promise_misses",
            "Requests delivered below the tier they asked for (tier = requested)",
            mt,
            registry=r,
        )
        self.ttft = Histogram(
            "tokenfactory_time_to_first_token_seconds",
            "Time to first token",
            mt,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.itl = Histogram(
            "tokenfactory_inter_token_latency_seconds",
            "Time between streamed tokens",
            mt,
            buckets=ITL_BUCKETS,
            registry=r,
        )
        self.e2e = Histogram(
            "tokenfactory_e2e_request_latency_seconds",
            "Request latency end to end",
            mt,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue = Histogram(
            "tokenfactory_queue_time_seconds",
            "Time waiting before the first step",
            mt,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.decode_speed = Histogram(
            "tokenfactory_decode_tokens_per_second",
            "Per-request decode speed",
            mt,
            buckets=(0.5, 1, 2, 4, 8, 15, 25, 50, 100, 250, 600, 1000),
            registry=r,
        )
        self.running = Gauge("tokenfactory_running_requests", "Requests running", registry=r)
        self.waiting = Gauge("tokenfactory_waiting_requests", "Requests queued", registry=r)
        self.kv_usage = Gauge(
            "tokenfactory_kv_cache_usage", "Share of KV blocks in use", registry=r
        )
        self.gc_pause = Histogram(
            "tokenfactory_gc_pause_seconds",
            "Pauses of Python's garbage collector, by generation (2: the oldest)",
            ["generation"],
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
            registry=r,
        )
        self.gc_frozen_objects = Gauge(
            "tokenfactory_gc_frozen_objects",
            "Objects frozen after start-up (exempt from garbage collection)",
            registry=r,
        )
        self.tier_open = Gauge(
            "tokenfactory_tier_open", "1 if the tier is open on this hardware", ["tier"], registry=r
        )
        self.engine_healthy = Gauge(
            "tokenfactory_engine_healthy",
            "1 while the engine serves; 0 once failed steps marked it dead (restart the server)",
            registry=r,
        )
        self.engine_healthy.set(1)
        self.engine_failed_steps = Counter(
            "tokenfactory_engine_failed_steps",
            "Engine steps that raised (each ends every request in the engine)",
            registry=r,
        )
        self._failed_steps_seen = 0

    def observe_engine_health(self, healthy: bool, failed_steps: int) -> None:
        """Copy the engine's health in; `failed_steps` is its running total."""
        self.engine_healthy.set(1 if healthy else 0)
        if failed_steps > self._failed_steps_seen:
            self.engine_failed_steps.inc(failed_steps - self._failed_steps_seen)
            self._failed_steps_seen = failed_steps

    def render(self, refresh: Callable[[], None] | None = None) -> bytes:
        if refresh is not None:
            refresh()
        return generate_latest(self.registry)
