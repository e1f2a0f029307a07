"""The policy benchmark's load on a real engine, in process: wall clock, no HTTP.

`bench policies` measures the policies through the server; `policy_sim` replays the same load
on a simulated clock. This runs the load's requests (`policy_sim.load_requests`, or any list
of `LoadRequest`) through a loaded `Engine` as they fall due on the wall clock, and scores
them with the same `tally_served`. It needs only the engine (PyTorch), so it runs where the
server's dependencies are missing, e.g. on a GPU machine with random weights.

Times are the engine's `time.monotonic()`. A request is received at its arrival time even if
a step is under way then; it joins the engine after that step, as it would behind the server,
so a long step counts against its TTFT. A request's `stop_after` is honoured by aborting it
after that many tokens, as if its model had ended it (the policy planned with `max_tokens`).
"""

from __future__ import annotations

import statistics
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

from tokenfactory.bench.point_tally import PointTally
from tokenfactory.bench.policy_sim import LoadRequest, Served, tally_served
from tokenfactory.engine.engine import Engine
from tokenfactory.engine.outputs import RequestOutput
from tokenfactory.engine.sampling_params import SamplingParams
from tokenfactory.engine.sequence import FinishReason
from tokenfactory.tiers import TierCatalog, decode_speed


@dataclass
class EngineLoadResult:
    tally: PointTally
    served: list[Served]
    wall_s: float  # from the start until the last request ended (or was cut off)
    steps: int
    step_s_total: float  # the steps' own time, scheduling included
    schedule_s_total: float  # of which the scheduler and policy planned
    step_s_median: float | None  # over the run's last steps (the engine keeps 4,096)
    step_s_p99: float | None
    step_s_max: float | None
    slow_steps: int  # of those, steps over 50 ms (pauses, or long prompt chunks)
    mixed_step_s_median: float | None  # steps that computed prompt tokens
    per_tier: dict[str, dict] = field(default_factory=dict)  # speeds and TTFTs by tier

    def summary(self) -> dict:
        steps = max(self.steps, 1)
        return {
            **self.tally.summary(),
            "wall_s": self.wall_s,
            "steps": self.steps,
            "step_ms_mean": 1e3 * self.step_s_total / steps,
            "step_ms_median": None if self.step_s_median is None else 1e3 * self.step_s_median,
            "step_ms_p99": None if self.step_s_p99 is None else 1e3 * self.step_s_p99,
            "step_ms_max": None if self.step_s_max is None else 1e3 * self.step_s_max,
            "steps_over_50ms": self.slow_steps,
            "mixed_step_ms_median": (
                None if self.mixed_step_s_median is None else 1e3 * self.mixed_step_s_median
            ),
            "schedule_ms_mean": 1e3 * self.schedule_s_total / steps,
            "engine_busy_share": self.step_s_total / max(self.wall_s, 1e-9),
            "per_tier": self.per_tier,
        }


def run_engine_load(
    engine: Engine,
    requests: Iterable[LoadRequest],
    catalog: TierCatalog,
    rate: float,
    duration_s: float,
    drain_limit_s: float = 60.0,
    ignore_eos: bool = True,
    on_progress: Callable[[float, int, int], None] | None = None,
) -> EngineLoadResult:
    """Feed `requests` to an idle `engine` at their arrival times and step it until all end.

    Requests still unfinished `drain_limit_s` after the last arrival are aborted and scored
    as cut off. `ignore_eos` keeps every request at its `max_tokens` (random weights end
    requests at random otherwise); `on_progress(elapsed_s, sent, done)` is called about once
    a second.
    """
    if engine.has_unfinished():
        raise RuntimeError("the engine must be idle before a load starts")
    pending = deque(sorted(requests, key=lambda r: r.at_s))
    stats = engine.stats
    steps0, step_s0, sched_s0 = stats.total_steps, stats.total_step_s, stats.total_schedule_s
    stats.clear()
    live: dict[str, tuple[LoadRequest, float]] = {}  # id -> request, received at
    served: list[Served] = []
    t0 = time.monotonic()
    deadline = t0 + duration_s + drain_limit_s
    next_report = t0 + 1.0
    sent = 0
    while pending or live:
        now = time.monotonic()
        while pending and t0 + pending[0].at_s <= now:
            req = pending.popleft()
            received = t0 + req.at_s
            params = SamplingParams(
                temperature=0.0, max_tokens=req.max_tokens, ignore_eos=ignore_eos
            )
            terms = replace(req.terms, received_at=received)
            engine.add_request(req.prompt, params, req.request_id, terms)
            live[req.request_id] = (req, received)
            sent += 1
        if now >= deadline:
            for rid, (req, received) in live.items():
                engine.abort(rid)
                served.append(_cut_off(req, received))
            live.clear()
            break
        if on_progress is not None and now >= next_report:
            on_progress(now - t0, sent, len(served))
            next_report = now + 1.0
        if not engine.has_unfinished():
            if pending:
                time.sleep(max(0.0, min(t0 + pending[0].at_s - now, 0.05)))
            continue
        for out in engine.step():
            req, received = live[out.request_id]
            stopped = req.stop_after is not None and out.completion_tokens >= req.stop_after
            if not out.finished and stopped:
                engine.abort(out.request_id)
                out.finished_time = time.monotonic()
            if out.finished or stopped:
                del live[out.request_id]
                served.append(_served(req, received, out))
    wall = time.monotonic() - t0
    logged = stats.recent()
    durations = sorted(s.duration_s for s in logged)
    mixed = [s.duration_s for s in logged if s.num_prefill_tokens > 0]
    return EngineLoadResult(
        tally=tally_served(served, rate, max(wall, duration_s), catalog),
        served=served,
        wall_s=wall,
        steps=stats.total_steps - steps0,
        step_s_total=stats.total_step_s - step_s0,
        schedule_s_total=stats.total_schedule_s - sched_s0,
        step_s_median=statistics.median(durations) if durations else None,
        step_s_p99=durations[int(0.99 * (len(durations) - 1))] if durations else None,
        step_s_max=durations[-1] if durations else None,
        slow_steps=sum(1 for d in durations if d > 0.05),
        mixed_step_s_median=statistics.median(mixed) if mixed else None,
        per_tier=per_tier_speeds(served),
    )


def _served(req: LoadRequest, received: float, out: RequestOutput) -> Served:
    return Served(
        tier=req.terms.tier,
        received_at=received,
        first_token_time=out.first_token_time,
        finished_time=out.finished_time,
        prompt_tokens=out.prompt_tokens,
        output_tokens=out.completion_tokens,
        shed=out.finish_reason is FinishReason.SHED,
    )


def _cut_off(req: LoadRequest, received: float) -> Served:
    return Served(
        tier=req.terms.tier,
        received_at=received,
        first_token_time=None,
        finished_time=None,
        prompt_tokens=len(req.prompt),
        output_tokens=0,
        cut_off=True,
    )


def per_tier_speeds(served: Iterable[Served]) -> dict[str, dict]:
    """Per tier: requests, median and slowest decode speed, median and p99 TTFT (seconds)."""
    speeds: dict[str, list[float]] = {}
    ttfts: dict[str, list[float]] = {}
    counts: dict[str, int] = {}
    for r in served:
        counts[r.tier] = counts.get(r.tier, 0) + 1
        if r.first_token_time is None:
            continue
        ttfts.setdefault(r.tier, []).append(r.first_token_time - r.received_at)
        speed = decode_speed(r.output_tokens, r.first_token_time, r.finished_time)
        if speed is not None:
            speeds.setdefault(r.tier, []).append(speed)
    out = {}
    for tier, n in counts.items():
        s, t = sorted(speeds.get(tier, [])), sorted(ttfts.get(tier, []))
        out[tier] = {
            "requests": n,
            "tokens_per_s_median": statistics.median(s) if s else None,
            "tokens_per_s_min": s[0] if s else None,
            "ttft_s_median": statistics.median(t) if t else None,
            "ttft_s_p99": t[int(0.99 * (len(t) - 1))] if t else None,
        }
    return out
