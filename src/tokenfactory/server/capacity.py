"""What this hardware can promise: decode speed per user against batch size.

At start the server runs a short probe on the engine (before it serves anyone), or loads the
probe it cached for the same model, device and machine after a quick check that the cache
still agrees with the machine as it runs now. A tier opens only if one user can get its
promised speed and time to first token here; /v1/tiers says why the others are closed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from tokenfactory.engine.engine import Engine
from tokenfactory.engine.sampling_params import SamplingParams
from tokenfactory.scheduling.step_model import StepCoefficients
from tokenfactory.server.speculative_capacity import SpeculativeCapacity, measure_speculation
from tokenfactory.tiers import Tier, TierCatalog

log = logging.getLogger(__name__)

# 2: speculative speed measured beside plain decoding; 3: a short prompt's TTFT beside the long
# one's, so the fixed cost of a step with prompt tokens is told apart from a token's
PROBE_VERSION = 3
# A tier opens when one user gets this much more than its promised speed: the margin leaves
# room for the small batches and prompt chunks that share steps with it in real traffic.
SPEED_MARGIN = 1.15
# A cached probe is kept while a few decode steps timed at start agree with it within this
# factor, either way. Otherwise it is measured again: a probe taken on a busy machine, or by
# an engine that has since become faster or slower, would decide which tiers open for good.
RECHECK_FACTOR = 1.5
RECHECK_STEPS = 8
PROBE_PROMPT_TOKENS = 32


@dataclass(frozen=True)
class CapacityPoint:
    batch: int
    step_s: float  # median decode step time at this batch size
    tokens_per_s_per_user: float
    tokens_per_s: float


@dataclass
class Capacity:
    model: str
    device: str
    machine: str
    measured_at: str
    points: list[CapacityPoint]
    ttft_prompt_tokens: int
    ttft_s: float  # idle time to first token for a prompt of ttft_prompt_tokens
    cached: bool = False
    # The smallest batch's decode step as timed at this start, when the probe came from cache.
    recheck_step_s: float | None = None
    version: int = PROBE_VERSION
    extra: dict = field(default_factory=dict)
    speculation: SpeculativeCapacity | None = None  # None: no proposer configured
    # The idle TTFT of a short prompt too (None on probes that did not time one).
    short_ttft_prompt_tokens: int | None = None
    short_ttft_s: float | None = None

    @property
    def best_speed(self) -> float:
        return max(p.tokens_per_s_per_user for p in self.points)

    @property
    def smallest_batch(self) -> CapacityPoint:
        return min(self.points, key=lambda p: p.batch)

    def agrees_with(self, step_s: float, factor: float = RECHECK_FACTOR) -> bool:
        """Whether a decode step at the smallest batch, timed now, matches this probe's."""
        probed = self.smallest_batch.step_s
        return probed / factor <= step_s <= probed * factor

    def max_batch_at(self, tokens_per_s: float) -> int:
        """The largest measured batch whose per-user speed still meets `tokens_per_s`."""
        ok = [p.batch for p in self.points if p.tokens_per_s_per_user >= tokens_per_s]
        return max(ok, default=0)

    def step_prior(self) -> StepCoefficients:
        """A starting point for the step-time model from this probe, before any step of real
        traffic: the fixed cost and the cost per decoding sequence from a line through the
        decode steps; a prompt token from the two idle TTFTs' difference over their lengths,
        and what a step with prompt tokens pays beyond a decode step from the short one (a
        probe with one TTFT charges it all per token). KV reads are left at zero for the fit
        to learn: the probe's short prompts cannot show them. Without this the model starts
        from a CPU guess, ~400x off per decoding sequence on a GPU."""
        xs = [float(p.batch) for p in self.points]
        ys = [p.step_s for p in self.points]
        if len(xs) > 1 and max(xs) > min(xs):
            mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
            slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / sum(
                (x - mean_x) ** 2 for x in xs
            )
            slope = max(slope, 0.0)
        else:
            slope = 0.0
        smallest = self.smallest_batch
        base = max(smallest.step_s - slope * smallest.batch, 0.1 * smallest.step_s)
        step = base + slope  # the step that samples the first token
        short, short_s = self.short_ttft_prompt_tokens, self.short_ttft_s
        if short is not None and short_s is not None and self.ttft_prompt_tokens > short:
            prefill = max(self.ttft_s - short_s, 0.0) / (self.ttft_prompt_tokens - short)
            fixed = max(short_s - step - short * prefill, 0.0)
        else:
            prefill = max(self.ttft_s - step, 0.0) / max(self.ttft_prompt_tokens, 1)
            fixed = 0.0
        return StepCoefficients(
            base_s=base,
            per_decode_s=slope,
            per_prefill_token_s=prefill,
            per_kv_token_s=0.0,
            prefill_step_s=fixed,
        )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Capacity:
        d = dict(d)
        d["points"] = [CapacityPoint(**p) for p in d["points"]]
        if d.get("speculation") is not None:
            d["speculation"] = SpeculativeCapacity.from_dict(d["speculation"])
        return cls(**d)


@dataclass(frozen=True)
class TierStatus:
    tier: Tier
    available: bool
    reason: str | None
    max_users_at_promise: int
    # Open only because speculative decoding reaches its speed (on the probe's workload).
    relies_on_speculation: bool = False


def tier_statuses(catalog: TierCatalog, capacity: Capacity) -> dict[str, TierStatus]:
    out = {}
    spec = capacity.speculation
    for tier in catalog.tiers:
        need = tier.tokens_per_s * SPEED_MARGIN
        reason = None
        relies = False
        if capacity.best_speed < need and spec is not None and spec.best_speed >= need:
            relies = True
        elif capacity.best_speed < need:
            reason = (
                f"one user gets at most {capacity.best_speed:.1f} tokens/s on this hardware "
                f"(measured {capacity.measured_at[:10]}); the tier promises "
                f"{tier.tokens_per_s:g} tokens/s."
            )
            if spec is not None:
                reason += (
                    f" Speculative decoding ({spec.proposer}) reached "
                    f"{spec.best_speed:.1f} tokens/s on the {spec.workload} workload."
                )
        elif capacity.ttft_s > tier.ttft_s:
            reason = (
                f"a {capacity.ttft_prompt_tokens}-token prompt takes {capacity.ttft_s:.2f} s to "
                f"its first token on this hardware even when idle; the tier promises "
                f"{tier.ttft_s:g} s."
            )
        users = 0
        if reason is None:
            users = spec.max_batch_at(need) if relies and spec else capacity.max_batch_at(need)
        out[tier.name] = TierStatus(tier, reason is None, reason, users, relies)
    return out


def probe_key(engine: Engine, model_identity: str, batches: tuple[int, ...] | None = None) -> str:
    parts = [
        str(batches),
        str(PROBE_VERSION),
        model_identity,
        engine.model_name,
        str(engine.device),
        str(engine.dtype),
        str(engine.config.quantization),  # FP8 weights decode at another speed
        platform.machine(),
        _processor(engine),
        str(_threads()),
        str(engine.config.max_num_seqs),
        str(engine.config.speculation),
        str(engine.config.num_speculative_tokens),
        str(engine.config.draft_model),
    ]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def load_or_measure(
    engine: Engine,
    cache_dir: Path | None,
    model_identity: str,
    remeasure: bool = False,
    batches: tuple[int, ...] | None = None,
    recheck_factor: float = RECHECK_FACTOR,
) -> Capacity:
    """The cached probe for this model and machine if a quick check agrees with it, or a fresh
    one (then cached)."""
    path = None
    if cache_dir is not None:
        path = cache_dir / f"capacity-{probe_key(engine, model_identity, batches)}.json"
        cap = None if remeasure else _read_cache(path)
        if cap is not None:
            batch = cap.smallest_batch.batch
            vocab = engine.model_config.vocab_size
            with probe_policy(engine, drafts=False):
                steps = _decode_steps(engine, batch, PROBE_PROMPT_TOKENS, RECHECK_STEPS, vocab)
            now = statistics.median(steps)
            if cap.agrees_with(now, recheck_factor):
                cap.cached, cap.recheck_step_s = True, now
                return cap
            log.warning(
                "the cached capacity probe (%s) has a %d-sequence decode step of %.1f ms, but it "
                "takes %.1f ms now: measuring again",
                cap.measured_at,
                batch,
                cap.smallest_batch.step_s * 1e3,
                now * 1e3,
            )
    cap = measure(engine, batches)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(cap.to_dict(), indent=2))
    return cap


def _read_cache(path: Path) -> Capacity | None:
    if not path.exists():
        return None
    try:
        cap = Capacity.from_dict(json.loads(path.read_text()))
    except (ValueError, TypeError, KeyError):
        log.warning("ignoring unreadable capacity cache %s", path)
        return None
    if cap.version != PROBE_VERSION or not cap.points:
        return None
    return cap


def measure(
    engine: Engine,
    batches: tuple[int, ...] | None = None,
    decode_steps: int = 12,
    prompt_tokens: int = PROBE_PROMPT_TOKENS,
    ttft_prompt_tokens: int = 256,
) -> Capacity:
    """Run the probe: decode step time at several batch sizes, and an idle prompt's TTFT."""
    if engine.has_unfinished():
        raise RuntimeError("the capacity probe needs an idle engine")
    if batches is None:
        batches = tuple(b for b in (1, 2, 4, 8, 16, 32, 64) if b <= engine.config.max_num_seqs)
    vocab = engine.model_config.vocab_size
    points = []
    with probe_policy(engine, drafts=False):
        for b in batches:
            step_times = _decode_steps(engine, b, prompt_tokens, decode_steps, vocab)
            if not step_times:
                raise RuntimeError(f"the capacity probe saw no decode step of {b} sequences")
            step = statistics.median(step_times)
            points.append(CapacityPoint(b, step, 1.0 / step, b / step))
        ttft_len = min(ttft_prompt_tokens, engine.max_model_len - 2)
        ttft = _idle_ttft(engine, ttft_len, vocab)
        short_len = max(1, ttft_len // 8)
        short_ttft = _idle_ttft(engine, short_len, vocab)
    with probe_policy(engine, drafts=True):
        speculation = measure_speculation(engine)
    return Capacity(
        model=engine.model_name,
        device=str(engine.device),
        machine=f"{platform.machine()} {_processor(engine)} x{_threads()}",
        measured_at=datetime.now(UTC).isoformat(timespec="seconds"),
        points=points,
        ttft_prompt_tokens=ttft_len,
        ttft_s=ttft,
        speculation=speculation,
        short_ttft_prompt_tokens=short_len,
        short_ttft_s=short_ttft,
    )


@contextmanager
def probe_policy(engine: Engine, drafts: bool) -> Iterator[None]:
    """Probe under fcfs, whatever the engine serves with: the probe measures the hardware, so
    every probe request steps every step (a pacing policy on a slow machine would carry fewer).
    `drafts`: speculate where it pays (the speculative probe), or not at all. The engine's own
    policy is back afterwards, with an empty prefix cache."""
    policy = engine.config.policy
    engine.use_policy("fcfs")
    if not drafts:
        engine.scheduler.max_draft_tokens = 0
    try:
        yield
    finally:
        engine.use_policy(policy)


def _prompt(i: int, n: int, vocab: int) -> list[int]:
    # Distinct token ids per probe request so the prefix cache does not flatter the probe.
    return [(7919 * i + 104729 * j + 17) % (vocab - 1) + 1 for j in range(n)]


def _decode_steps(engine: Engine, batch: int, prompt_len: int, steps: int, vocab: int) -> list:
    params = SamplingParams(temperature=0.0, max_tokens=steps + 2, ignore_eos=True)
    tag = time.monotonic_ns()
    ids = [
        engine.add_request(_prompt(i + batch * 1000, prompt_len, vocab), params, f"probe-{tag}-{i}")
        for i in range(batch)
    ]
    engine.stats.clear()
    try:
        while engine.has_unfinished():
            engine.step()
    finally:
        for rid in ids:
            engine.abort(rid)
    decode = [
        s.duration_s
        for s in engine.stats.recent()
        if s.num_prefill_tokens == 0 and s.num_decode_tokens == batch and not s.num_draft_tokens
    ]
    engine.stats.clear()
    return decode[1:] or decode  # the first full decode step warms caches


def _idle_ttft(engine: Engine, n: int, vocab: int) -> float:
    params = SamplingParams(temperature=0.0, max_tokens=1, ignore_eos=True)
    best = float("inf")
    for attempt in range(2):  # the first run warms kernels; keep the better of two
        rid = f"probe-ttft-{time.monotonic_ns()}-{attempt}"
        start = time.monotonic()
        engine.add_request(_prompt(10_000 + attempt, n, vocab), params, rid)
        while engine.has_unfinished():
            engine.step()
        best = min(best, time.monotonic() - start)
    engine.stats.clear()
    return best


def _processor(engine: Engine) -> str:
    if engine.device.type == "cuda":
        import torch

        return torch.cuda.get_device_name(engine.device)
    return _cpu_model()


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown cpu"


def _threads() -> int:
    import torch

    return torch.get_num_threads()
