"""The `tier` policy: every request gets the speed its tier promised, spare steps go to the rest.

In one batch every carried sequence advances one token per step, and a step gets slower as the
batch grows. So instead of carrying everyone every step, the policy paces: each running request
has a token schedule from its promised speed (token k is due at first_token_time + k / speed),
and a step carries

1. every request whose next token is due (always, whatever the step then costs);
2. work-conserving fill: requests that are ahead of schedule, least ahead first, while the
   step-time model predicts the step stays within `margin / fastest promised speed`;
3. prefill chunks (continuing prompts and new admissions), ordered by TTFT deadline weighted
   by value, in the time that is left (at least `min_prefill_tokens`).

Slower tiers therefore skip steps, and faster tiers get small, fast steps. Requests without a
promise (no metadata: offline use) are best effort: they only fill, but each running one is
carried at least once every `1 / min_share` steps so it never starves.

Admission: a waiting request is admitted only if the model says the load of every promise,
its own included, still fits in the engine's time (`utilization <= max_utilization`);
otherwise it waits. The lowest tier is always let in while fewer than `min_free_running` of
its requests run, so free work never starves entirely.

The policy is plain Python over `Sequence` objects and a clock passed in, so it runs the same
under the engine and under a simulator with a synthetic clock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from tokenfactory.engine.policy import SchedulingPolicy, tier_rank
from tokenfactory.engine.sequence import Sequence
from tokenfactory.engine.step_model import CPU_PRIOR, StepCoefficients, StepTimeModel


@dataclass
class TierPolicyConfig:
    margin: float = 0.8  # a step may take this share of the fastest promise's token interval
    # When nothing running has a promise, steps may grow this long (best-effort throughput).
    max_step_s: float = 0.5
    # Best-effort requests get at least this share of steps; free-tier ones at least this
    # share or their promise, whichever is more.
    min_share: float = 0.05
    max_utilization: float = 0.9  # admission: predicted busy share of the engine's time
    min_free_running: int = 1  # lowest-tier requests always admissible below this count
    min_prefill_tokens: int = 16  # prefill progress per step, however tight the step
    best_effort_ttft_s: float = 60.0  # TTFT "deadline" for requests without a promise
    value_unit: float = 1_000_000.0  # output price (micro-USD per Mtok) worth one weight step
    unbounded_max_tokens: int = 1024  # tokens assumed left for a request without max_tokens
    max_retry_after_s: float = 60.0  # the longest Retry-After a shed request is told


@dataclass(frozen=True)
class RequestTerms:
    """What a request was promised, read from `Sequence.metadata` (absent: best effort)."""

    rank: int
    speed: float | None  # tokens/s promised; None: best effort
    ttft_s: float | None
    price: int  # micro-USD per million output tokens
    received_at: float

    @staticmethod
    def of(seq: Sequence) -> RequestTerms:
        md = seq.metadata
        speed = _positive(md.get("promised_tokens_per_s"))
        ttft = _positive(md.get("promised_ttft_s"))
        price = md.get("output_price", 0)
        received = md.get("received_at")
        return RequestTerms(
            rank=tier_rank(seq),
            speed=speed,
            ttft_s=ttft,
            price=int(price) if isinstance(price, int | float) else 0,
            received_at=float(received) if isinstance(received, int | float) else seq.arrival_time,
        )


class TierPolicy(SchedulingPolicy):
    name = "tier"

    def __init__(
        self,
        config: TierPolicyConfig | None = None,
        step_model: StepTimeModel | None = None,
        prior: StepCoefficients = CPU_PRIOR,
    ):
        self.config = config or TierPolicyConfig()
        self.model = step_model or StepTimeModel(prior)
        self._steps = 0  # steps planned so far
        self._last_carried: dict[str, int] = {}  # request id -> step it was last carried
        self._terms: dict[str, RequestTerms] = {}
        self._cap: int | None = None  # this step's token budget, from order_running
        self._refused_rank = -1  # highest rank refused admission this step
        self._refused_seq: Sequence | None = None  # the request refused at that rank
        self._load_cache: tuple | None = None  # utilization terms of this step's running
        self._target_s = self.config.max_step_s

    # ---- terms and schedule ---------------------------------------------------------------

    def terms(self, seq: Sequence) -> RequestTerms:
        t = self._terms.get(seq.request_id)
        if t is None:
            t = self._terms[seq.request_id] = RequestTerms.of(seq)
        return t

    def due_at(self, seq: Sequence) -> float | None:
        """When the request's next token is due; None for best effort or before its first."""
        t = self.terms(seq)
        if t.speed is None or seq.first_token_time is None:
            return None
        return seq.first_token_time + seq.num_output_tokens / t.speed

    def deadline(self, seq: Sequence) -> float:
        """The time by which the request's next token should exist (TTFT, then pacing)."""
        due = self.due_at(seq)
        if due is not None:
            return due
        t = self.terms(seq)
        return t.received_at + (t.ttft_s or self.config.best_effort_ttft_s)

    def weight(self, seq: Sequence) -> float:
        """Value weight: 1 for free work, growing with the log of the output price."""
        return 1.0 + math.log2(1.0 + self.terms(seq).price / self.config.value_unit)

    def urgency(self, seq: Sequence, now: float) -> tuple[bool, float]:
        """Sort key for prefill work: deadlines still meetable first, then by slack / value."""
        slack = self.deadline(seq) - now
        return (slack < 0, slack / self.weight(seq))

    def target_step_s(self, seqs: list[Sequence]) -> float:
        speeds = [s for s in (self.terms(q).speed for q in seqs) if s is not None]
        if not speeds:
            return self.config.max_step_s
        return min(self.config.margin / max(speeds), self.config.max_step_s)

    # ---- the step -----------------------------------------------------------------------------

    def order_running(self, running: list[Sequence], now: float) -> list[Sequence]:
        cfg = self.config
        self._steps += 1
        live = {s.request_id for s in running}
        for rid in [r for r in self._terms if r not in live]:
            self._terms.pop(rid, None)
            self._last_carried.pop(rid, None)

        target = self._target_s = self.target_step_s(running)
        horizon = now + 2 * target  # skipped now, its next chance ends about two steps later
        every = max(1, round(1 / cfg.min_share)) if cfg.min_share > 0 else None

        due: list[tuple[float, Sequence]] = []
        ahead: list[tuple[float, Sequence]] = []
        prefill: list[Sequence] = []
        for seq in running:
            if seq.is_prefill:
                prefill.append(seq)
                continue
            at = self.due_at(seq)
            # First seen decoding: its prompt's last chunk ran (and sampled) last step.
            last = self._last_carried.setdefault(seq.request_id, self._steps - 1)
            starved = every is not None and self._steps - last >= every
            if (at is not None and at <= horizon) or starved:
                due.append((at if at is not None else now, seq))
            else:
                # Least ahead first; best effort after every paced request.
                ahead.append((at if at is not None else math.inf, seq))
        due.sort(key=lambda p: (p[0], -self.weight(p[1])))
        ahead.sort(key=lambda p: (p[0], -self.weight(p[1])))

        carried = [s for _, s in due]
        kv = sum(s.num_tokens for s in carried)
        coef = self.model.coefficients
        per_token = max(coef.per_prefill_token_s, 1e-9)
        # Prompts in progress come before ahead decodes: the time the due decodes leave is
        # theirs first (a first token is worth more than running further ahead).
        due_s = self.model.predict(len(carried), 0, kv)
        left_s = target - due_s
        pending = sum(s.num_uncomputed_tokens for s in prefill)
        reserved = min(pending, max(0, int(left_s / per_token)))
        for _, seq in ahead:
            # Work-conserving: a step that would otherwise be empty carries someone.
            cost = self.model.predict(len(carried) + 1, reserved, kv + seq.num_tokens)
            if carried and cost > target:
                break
            carried.append(seq)
            kv += seq.num_tokens
        for seq in carried:
            self._last_carried[seq.request_id] = self._steps

        # Prefill (and admissions) get what is left, and never less than a minimal chunk.
        spare = target - self.model.predict(len(carried), reserved, kv)
        prefill_tokens = max(cfg.min_prefill_tokens, reserved + max(0, int(spare / per_token)))
        # Prompts whose TTFT deadline is near get what they need to make it, even if the step
        # then runs long: each one's pending tokens spread over the steps left to its deadline.
        urgent = [(self.deadline(s) - now, s.num_uncomputed_tokens) for s in prefill]
        urgent = [(left, n) for left, n in urgent if left > 0]
        needed = 0
        for _ in range(3):  # fixed point: the prompt tokens lengthen the very steps they need
            step_s = max(target, due_s + coef.per_prefill_token_s * needed)
            # Steps still to come before each deadline; the last chunk must end in time.
            needed = sum(math.ceil(n / max(1.0, left / step_s - 1)) for left, n in urgent)
        prefill_tokens = max(prefill_tokens, needed)
        self._cap = len(carried) + prefill_tokens
        self._refused_rank, self._refused_seq = -1, None
        prefill.sort(key=lambda s: self.urgency(s, now))
        # Decodes first so that the cap's prefill share goes to prompts, most urgent first.
        return carried + prefill

    def step_token_budget(self, now: float) -> int | None:
        return self._cap

    def order_waiting(self, waiting: list[Sequence], now: float) -> list[Sequence]:
        return sorted(waiting, key=lambda s: self.urgency(s, now))

    def may_admit(self, seq: Sequence, running: list[Sequence], now: float) -> bool:
        cfg = self.config
        rank = self.terms(seq).rank
        if not running:
            # An idle engine takes anything: a request whose promise cannot be kept even
            # alone must still run (at the best speed there is), never wait forever.
            return True
        if rank == 0 and cfg.min_free_running > 0:
            lowest = sum(1 for s in running if self.terms(s).rank == 0)
            if lowest < cfg.min_free_running:
                return True
        # No overtaking: once a request waits for capacity, lower tiers wait behind it.
        if rank < self._refused_rank:
            return False
        if self.utilization([*running, seq]) <= cfg.max_utilization:
            return True
        if rank > self._refused_rank:
            self._refused_rank, self._refused_seq = rank, seq
        return False

    def utilization(self, seqs: list[Sequence]) -> float:
        """Predicted busy share of the engine's time if `seqs` all keep their promises.

        Steps must come at least as often as the fastest promise needs (R per second), each
        paying the fixed cost; every request needs its promised tokens per second (best
        effort: its minimum share of those steps); prompts still to run must be done within
        their TTFT.
        """
        if not seqs:
            return 0.0
        cfg = self.config
        c = self.model.coefficients
        # Within a step the scheduler asks about running + admitted so far + one candidate;
        # the per-request terms of the prefix it asked about before are kept (numpy arrays).
        cache = self._load_cache
        if (
            cache is not None
            and cache[0] == self._steps
            and cache[1] == c
            and len(cache[2]) <= len(seqs)
            and all(a is b for a, b in zip(cache[2], seqs, strict=False))
        ):
            base = cache[2]
        else:
            base = seqs[:-1]
            self._load_cache = (self._steps, c, base, *self._loads(base, c))
        _, _, _, speeds, per_token, prefill = self._load_cache
        extra_speeds, extra_per_token, extra_prefill = self._loads(seqs[len(base) :], c)
        speeds = np.concatenate([speeds, extra_speeds])
        per_token = np.concatenate([per_token, extra_per_token])
        rate = speeds.max() / cfg.margin if speeds.max() > 0 else 1.0 / cfg.max_step_s
        tokens_per_s = np.maximum(speeds, cfg.min_share * rate)
        busy = rate * c.base_s + float(tokens_per_s @ per_token) + prefill + extra_prefill
        return float(busy)

    def _loads(
        self, seqs: list[Sequence], c: StepCoefficients
    ) -> tuple[np.ndarray, np.ndarray, float]:
        """Promised speeds (0: best effort), decode cost per token, summed prefill load."""
        speeds = np.empty(len(seqs))
        per_token = np.empty(len(seqs))
        prefill = 0.0
        for i, seq in enumerate(seqs):
            t = self.terms(seq)
            speeds[i] = t.speed or 0.0
            per_token[i] = c.per_decode_s + c.per_kv_token_s * seq.num_tokens
            pending = seq.num_uncomputed_tokens
            if pending > 1:
                prefill += (
                    c.per_prefill_token_s * pending / (t.ttft_s or self.config.best_effort_ttft_s)
                )
        return speeds, per_token, prefill

    def retry_after_s(self, seq: Sequence, running: list[Sequence], now: float) -> float | None:
        """How long until `seq` would be admissible: None if it is now, math.inf if never.

        Running requests are assumed to finish at their promised pace (best effort: at its
        minimum share of the steps), so the estimate errs long: a basis for Retry-After.
        """
        cfg = self.config
        if self.utilization([*running, seq]) <= cfg.max_utilization:
            return None
        if self.utilization([seq]) > cfg.max_utilization:
            return math.inf
        speeds = [s for s in (self.terms(q).speed for q in [*running, seq]) if s is not None]
        rate = max(speeds) / cfg.margin if speeds else 1.0 / cfg.max_step_s
        ends = []
        for other in running:
            left = other.params.max_tokens or cfg.unbounded_max_tokens
            left = max(0, left - other.num_output_tokens) + max(0, other.num_uncomputed_tokens - 1)
            speed = self.terms(other).speed or cfg.min_share * rate
            ends.append((left / speed, other))
        ends.sort(key=lambda p: p[0])
        remaining = list(running)
        for wait, other in ends:
            remaining.remove(other)
            if self.utilization([*remaining, seq]) <= cfg.max_utilization:
                return wait
        return math.inf  # unreachable: alone it fits

    def shed(self, seq: Sequence, running: list[Sequence], now: float) -> float | None:
        """A sheddable request (metadata "sheddable") that cannot be admitted on arrival is
        refused at once, with the model's estimate of when it could be (capped)."""
        if not seq.metadata.get("sheddable"):
            return None
        retry = self.retry_after_s(seq, running, now)
        if retry is None:
            # It would fit, but better-paid work is already waiting for capacity: capacity is
            # gone for this tier too. Hint when that waiting request could start.
            waiting = self._refused_seq
            if waiting is None or self.terms(waiting).rank <= self.terms(seq).rank:
                return None
            retry = self.retry_after_s(waiting, running, now) or 1.0
        return min(max(retry, 1.0), self.config.max_retry_after_s)

    def preemption_victim(self, candidates: list[Sequence]) -> Sequence:
        """Lowest value first: lowest rank, then cheapest, then the newest arrival."""
        return min(
            candidates,
            key=lambda s: (self.terms(s).rank, self.terms(s).price, -s.arrival_time),
        )

    def on_step(self, stats: Any) -> None:
        if stats is not None:
            self.model.observe_step(stats)


def _positive(value: object) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return float(value)
    return None
