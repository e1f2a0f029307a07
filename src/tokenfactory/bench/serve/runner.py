"""One load point: sessions arrive (Poisson/gamma, trace timestamps, or all at once), their
requests stream under a concurrency cap, bounded by a request count and a duration."""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

import httpx
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from tokenfactory.bench.serve.arrivals import arrival_gaps
from tokenfactory.bench.serve.client import RequestRecord, stream_request
from tokenfactory.bench.serve.tiers_info import KeyRing
from tokenfactory.bench.serve.workloads import Clamp, Session, WorkloadOptions, build_sessions
from tokenfactory.gc_heap import freeze_heap
from tokenfactory.tiers import TierCatalog


class EndpointError(RuntimeError):
    """The endpoint cannot be reached at all."""


@dataclass
class LoadPoint:
    request_rate: float = math.inf
    max_concurrency: int | None = None

    @property
    def label(self) -> str:
        rate = "inf" if math.isinf(self.request_rate) else f"{self.request_rate:g}"
        conc = "-" if self.max_concurrency is None else str(self.max_concurrency)
        return f"rate={rate} conc={conc}"


@dataclass
class RunOptions:
    api_url: str  # .../v1
    model: str
    endpoint: str = "chat"  # chat | completions
    num_prompts: int = 100
    duration_s: float | None = None
    burstiness: float = 1.0
    timeout_s: float = 600.0
    temperature: float | None = None
    ignore_eos: bool = False
    extra_body: dict = field(default_factory=dict)
    seed: int = 0
    progress: bool = True
    warmup: bool = True  # one uncounted request first: opens a connection, checks the endpoint


@dataclass
class RunResult:
    point: LoadPoint
    records: list[RequestRecord]
    started_utc: str
    duration_s: float
    clamped: int
    # micro-USD per task id as the endpoint's ledger billed it (GET /v1/usage?by=task)
    ledger_task_costs: dict[str, int] | None = None


def api_url(base_url: str) -> str:
    base = base_url.rstrip("/")
    return base if base.endswith("/v1") else base + "/v1"


class _Budget:
    def __init__(self, num: int, duration_s: float | None, t0: float) -> None:
        self.left = num
        self.deadline = None if duration_s is None else t0 + duration_s

    def take(self) -> bool:
        if self.left <= 0 or (self.deadline is not None and time.perf_counter() >= self.deadline):
            return False
        self.left -= 1
        return True


class Runner:
    def __init__(
        self,
        opts: RunOptions,
        workload: WorkloadOptions,
        catalog: TierCatalog,
        keys: KeyRing,
        console: Console | None = None,
    ) -> None:
        self.opts = opts
        self.workload = workload
        self.catalog = catalog
        self.keys = keys
        self.console = console or Console(stderr=True)
        self._headers: dict[str | None, dict[str, str]] = {}

    def headers(self, tier: str | None, task_id: str | None = None) -> dict[str, str]:
        if tier not in self._headers:
            key = self.keys.key_for(tier, self.catalog)
            self._headers[tier] = {"Authorization": f"Bearer {key}"} if key else {}
        if task_id is None:
            return self._headers[tier]
        return {**self._headers[tier], "X-Task-Id": task_id}

    def body(self, rec: RequestRecord, spec) -> dict:
        o = self.opts
        body: dict = {
            "model": o.model,
            "max_tokens": spec.max_tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if o.endpoint == "chat":
            body["messages"] = spec.messages
        else:
            body["prompt"] = spec.prompt_text()
        if o.temperature is not None:
            body["temperature"] = o.temperature
        if o.ignore_eos:
            body["ignore_eos"] = True
        if spec.tier:
            body["service_tier"] = spec.tier
        if spec.cache_key:
            body["prompt_cache_key"] = spec.cache_key
        body.update(o.extra_body)
        return body

    async def _warmup(self, client: httpx.AsyncClient, url: str) -> None:
        from tokenfactory.bench.serve.workloads import RequestSpec

        spec = RequestSpec([{"role": "user", "content": "Say hello."}], 4, 4)
        rec = RequestRecord(-1, None)
        await stream_request(
            client, url, self.body(rec, spec), self.headers(None), rec, self.opts.endpoint == "chat"
        )
        if rec.error_kind in ("connection", "timeout"):
            raise EndpointError(f"cannot reach {url}: {rec.error_message}")
        if not rec.ok:
            self.console.print(
                f"[yellow]warm-up request failed[/yellow] ({rec.error_status} {rec.error_type}: "
                f"{rec.error_message}); measuring anyway"
            )

    async def run(self, point: LoadPoint) -> RunResult:
        o = self.opts
        clamp = Clamp(self.workload.max_context)
        sessions = build_sessions(self.workload, clamp)
        # The prompts and the client's own state live through the run: a full collection
        # walking them mid-run would delay every timestamp it catches, so exempt them.
        freeze_heap()
        limit = point.max_concurrency
        pool = httpx.Limits(max_connections=limit, max_keepalive_connections=limit)
        timeout = httpx.Timeout(o.timeout_s, connect=min(o.timeout_s, 30.0))
        url = f"{o.api_url}/{'chat/completions' if o.endpoint == 'chat' else 'completions'}"
        records: list[RequestRecord] = []
        sem = asyncio.Semaphore(limit) if limit else None
        user_slots = asyncio.Semaphore(limit) if limit and math.isinf(point.request_rate) else None
        started_utc = datetime.now(UTC).isoformat(timespec="seconds")
        t0 = time.perf_counter()
        budget = _Budget(o.num_prompts, o.duration_s, t0)
        keep_text = self.workload.name == "agent"
        progress = Progress(
            TextColumn(f"[bold]{point.label}[/bold]"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            console=self.console,
            disable=not o.progress,
            refresh_per_second=4,
        )
        task = progress.add_task("requests", total=o.num_prompts, status="")

        async with httpx.AsyncClient(limits=pool, timeout=timeout, http2=False) as client:
            if o.warmup:
                await self._warmup(client, url)

            async def one(spec) -> RequestRecord:
                rec = RequestRecord(
                    len(records),
                    spec.tier,
                    spec.session,
                    spec.step,
                    spec.input_tokens,
                    spec.max_tokens,
                    task_id=spec.task_id,
                )
                records.append(rec)
                if sem is not None:
                    async with sem:
                        await stream_request(
                            client,
                            url,
                            self.body(rec, spec),
                            self.headers(spec.tier, spec.task_id),
                            rec,
                            o.endpoint == "chat",
                            keep_text,
                        )
                else:
                    await stream_request(
                        client,
                        url,
                        self.body(rec, spec),
                        self.headers(spec.tier, spec.task_id),
                        rec,
                        o.endpoint == "chat",
                        keep_text,
                    )
                rec.start = rec.t_send - t0
                return rec

            async def run_session(session: Session) -> None:
                try:
                    delay, spec = next(session.steps)
                    while True:
                        if delay > 0:
                            await asyncio.sleep(delay)
                        if not budget.take():
                            return
                        rec = await one(spec)
                        delay, spec = session.steps.send(rec.text or "" if rec.ok else None)
                except StopIteration:
                    pass
                finally:
                    if user_slots is not None:
                        user_slots.release()

            async def report() -> None:
                while True:
                    await asyncio.sleep(0.25)
                    done = [r for r in records if r.t_end is not None]
                    errors = sum(1 for r in done if not r.ok)
                    elapsed = time.perf_counter() - t0
                    toks = sum(r.output_tokens for r in done)
                    progress.update(
                        task,
                        completed=len(done),
                        status=f"errors {errors}  out {toks / max(elapsed, 1e-9):,.0f} tok/s",
                    )

            tasks: set[asyncio.Task] = set()
            reporter = asyncio.create_task(report()) if o.progress else None
            with progress:
                gaps = arrival_gaps(point.request_rate, o.burstiness, o.seed)
                next_at = t0
                launched = 0
                for session in sessions:
                    if budget.left <= 0 or launched >= o.num_prompts:
                        break
                    if session.timestamp_s is not None:
                        next_at = t0 + session.timestamp_s
                    else:
                        next_at += next(gaps)
                    wait = next_at - time.perf_counter()
                    if budget.deadline is not None and next_at >= budget.deadline:
                        break
                    if wait > 0:
                        await asyncio.sleep(wait)
                    if user_slots is not None:
                        await user_slots.acquire()
                    if budget.left <= 0:
                        if user_slots is not None:
                            user_slots.release()
                        break
                    t = asyncio.create_task(run_session(session))
                    tasks.add(t)
                    t.add_done_callback(tasks.discard)
                    launched += 1
                    if wait <= 0:
                        await asyncio.sleep(0)
                while tasks:
                    await asyncio.gather(*list(tasks))
                if reporter is not None:
                    reporter.cancel()
                done = [r for r in records if r.t_end is not None]
                progress.update(task, completed=len(done), total=len(records))
        ends = [r.t_end for r in records if r.t_end is not None]
        duration = (max(ends) - t0) if ends else time.perf_counter() - t0
        return RunResult(point, records, started_utc, duration, clamp.clamped)


def run_point(runner: Runner, point: LoadPoint) -> RunResult:
    """Run one load point on a fresh event loop (uvloop when installed)."""
    try:
        import uvloop

        return uvloop.run(runner.run(point))
    except ImportError:
        return asyncio.run(runner.run(point))
