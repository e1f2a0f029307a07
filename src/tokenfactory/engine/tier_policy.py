"""The `tier` policy: every request gets the speed its tier promised, spare steps go to the rest.

In one batch every carried sequence advances one token per step, and a step gets slower as the
batch grows. So instead of carrying everyone every step, the policy paces: each running request
has a token schedule from its promised speed (token k is due at first_token_time + k / (pace *
speed)), and each step is planned in three parts:

1. Length: as long as no paced request falls behind for good: a request may lend its lead
   (time until its next token is due), and a late one gets steps of at most `catch_up` of its
   token interval, so it gains every step; never longer than `max_step_s`.
2. Decodes: every request that would be late if it skipped this step is carried; in overload,
   the dearest first. Then, work-conserving, requests that are ahead (least ahead first,
   dearer first) while the step-time model says the step still fits its length.
3. Prefill: prompt chunks (continuing, and the next admission), dearest level first and by
   TTFT deadline within a level, in the time left. A step that computes any prompt token pays
   a fixed cost (decode-only steps take a faster path), so prompts go in chunks worth several
   times it (the decode-only steps meanwhile build the lead that pays for them), or wait
   until their deadline makes them urgent (the dearest first tokens do not wait); then
   they run whole, as far as the paced decodes can absorb.

Slower tiers therefore skip steps, faster tiers get frequent short steps, and steps grow long
and full when nobody is pressed. Requests without a promise (no metadata: offline use) are best
effort: they only fill, but each running one is carried at least once every `1 / min_share`
steps so it never starves.

A request's terms are read at its *level*: the best tier it can still be billed at (its own,
or a slower fallback once its TTFT is missed), so late requests are paced and valued at what
they can still earn.

Admission is by value: a waiting request is admitted when the requests of its tier and dearer
ones, itself included, fit in the engine's time (`utilization <= max_utilization`, a fluid
estimate: steps per second the fastest promise needs times the fixed step cost, plus every
promised token's cost, plus prompts spread over their TTFT); after half its TTFT, up to a full
load. Cheaper running work does not hold dearer work back: it gets what is left. A request that
does not fit waits, and cheaper tiers wait behind it; one that asked for `service_tier=auto`
starts at once at a slower tier that fits instead (`_downgrade`). A sheddable request (the
free tier) that does not fit on arrival is refused at once with a Retry-After from the same
estimate when dearer work already waits or it could not start within `shed_wait_share` of its
TTFT; it may hold at most `sheddable_slot_share` of the sequence slots. The lowest tier is
always let in while fewer than `min_free_running` of its requests run, so free work never
starves entirely.

The policy is plain Python over `Sequence` objects and a clock passed in, so it runs the same
under the engine and under a simulator with a synthetic clock (`engine/simulator.py`).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace
from typing import Any

from tokenfactory.engine.policy import SchedulingPolicy, tier_rank
from tokenfactory.engine.queued_prompt_rate import QueuedPromptRate
from tokenfactory.engine.sequence import Sequence
from tokenfactory.engine.step_model import CPU_PRIOR, StepCoefficients, StepTimeModel


@dataclass
class TierPolicyConfig:
    pace: float = 1.1  # tokens are scheduled this much faster than promised: room for noise
    slack_share: float = 1.0  # a step may use this share of the most pressed request's lead
    max_step_s: float = 0.25  # the longest step, however far ahead everyone is
    # Time between two steps beyond this is not step overhead (a pause, an idle wait).
    max_step_gap_s: float = 0.1
    catch_up: float = 0.8  # a late request's steps last at most this share of its interval
    # Best-effort requests get at least this share of steps.
    min_share: float = 0.05
    max_utilization: float = 0.9  # admission: predicted busy share of the engine's time
    # A request that has waited this share of its TTFT is admitted up to a full load.
    last_call: float = 0.5
    min_free_running: int = 1  # lowest-tier requests always admissible below this count
    # Sheddable requests are admitted only while fewer than this share of slots are taken.
    sheddable_slot_share: float = 0.5
    ttft_safety: float = 0.5  # see _urgent: the share of the time left trusted
    # First tokens paying at least this (USD per million output tokens) do not wait for their
    # deadline: their prompts run whole as soon as they can (ultra and super as shipped).
    at_once_usd_per_mtok: float = 30.0
    min_prefill_tokens: int = 16  # prefill progress per step, however tight the step
    # A chunk that is not forced waits for a step with room for this many times the prefill
    # step's fixed cost in prompt work (or all that is pending).
    prefill_worth: float = 4.0
    best_effort_ttft_s: float = 60.0  # TTFT "deadline" for requests without a promise
    value_unit: float = 1_000_000.0  # output price (micro-USD per Mtok) worth one weight step
    unbounded_max_tokens: int = 1024  # tokens assumed left for a request without max_tokens
    max_retry_after_s: float = 60.0  # the longest Retry-After a shed request is told
    # A sheddable request that could start within this share of its TTFT waits instead.
    shed_wait_share: float = 0.1
    # A sheddable arrival behind a queue is refused when the prompts ahead of it, at the rate
    # queued prompts were computed lately, would take more than this share of its TTFT
    # (0: never; see `shed_queued`).
    queue_shed_share: float = 1.0


@dataclass(frozen=True)
class Level:
    """One promise a request can still be billed at: its own tier's, or a slower one's."""

    speed: float | None  # tokens/s promised; None: best effort
    ttft_s: float | None
    price: int  # micro-USD per million output tokens


@dataclass(frozen=True)
class RequestTerms:
    """What a request was promised, read from `Sequence.metadata` (absent: best effort).

    `levels` holds its tier's promise and then the slower tiers' ("fallbacks"): a request
    that misses its TTFT is billed at the best slower tier whose TTFT it still meets, so the
    policy paces and values it at that level (`level` is the index in use).
    """

    rank: int
    received_at: float
    levels: tuple[Level, ...]
    level: int = 0
    final: bool = False  # the level can no longer change (the first token exists)

    @property
    def speed(self) -> float | None:
        return self.levels[self.level].speed

    @property
    def ttft_s(self) -> float | None:
        return self.levels[self.level].ttft_s

    @property
    def price(self) -> int:
        return self.levels[self.level].price

    @staticmethod
    def of(seq: Sequence) -> RequestTerms:
        md = seq.metadata
        levels = [
            _level(
                md.get("promised_tokens_per_s"), md.get("promised_ttft_s"), md.get("output_price")
            )
        ]
        fallbacks = md.get("fallbacks")
        if isinstance(fallbacks, list):
            for f in fallbacks:
                if isinstance(f, dict):
                    levels.append(
                        _level(f.get("tokens_per_s"), f.get("ttft_s"), f.get("output_price"))
                    )
        received = md.get("received_at")
        return RequestTerms(
            rank=tier_rank(seq),
            received_at=float(received) if isinstance(received, int | float) else seq.arrival_time,
            levels=tuple(levels),
        )

    def settled(self, seq: Sequence, now: float) -> RequestTerms:
        """These terms at the best level the request can still reach: before its first
        token, the first level whose TTFT deadline is not past; after, the first whose TTFT
        it met (the last level when none)."""
        if self.final or len(self.levels) == 1:
            return self
        if seq.first_token_time is not None:
            waited, final = seq.first_token_time - self.received_at, True
        else:
            waited, final = now - self.received_at, False
        level = len(self.levels) - 1
        for i, lv in enumerate(self.levels):
            if lv.ttft_s is None or lv.ttft_s >= waited:
                level = i
                break
        if level == self.level and final == self.final:
            return self
        return replace(self, level=level, final=final)


def _level(speed: object, ttft: object, price: object) -> Level:
    return Level(
        speed=_positive(speed),
        ttft_s=_positive(ttft),
        price=int(price) if isinstance(price, int | float) and not isinstance(price, bool) else 0,
    )


@dataclass
class _Load:
    """What a set of requests needs from the engine, summed so that sets merge in O(1)."""

    max_speed: float = 0.0  # fastest promise (tokens/s), 0 when none
    decode_s: float = 0.0  # seconds per second of decode work at the promised speeds
    best_effort_s: float = 0.0  # decode seconds per step of the best-effort requests
    prefill_s: float = 0.0  # seconds per second of prompt work, each spread over its TTFT
    count: int = 0  # requests summed

    def add(self, other: _Load, sign: float = 1.0) -> None:
        self.count += int(sign) * other.count
        self.max_speed = max(self.max_speed, other.max_speed)
        self.decode_s += sign * other.decode_s
        self.best_effort_s += sign * other.best_effort_s
        self.prefill_s += sign * other.prefill_s


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
        self._judged: set[str] = set()  # sheddable requests already judged on arrival
        self._queue_judged: set[str] = set()  # arrivals already judged behind the queue
        self._prompt_rate = QueuedPromptRate()
        self._cap: int | None = None  # this step's token budget, from order_running
        self._refused_rank = -1  # highest rank refused admission this step
        self._refused_seq: Sequence | None = None  # the request refused at that rank
        # This step's running load by rank, and the request ids it already counts.
        self._by_rank: dict[int, _Load] | None = None
        self._counted: set[str] = set()
        self._waiting: list[Sequence] = []  # the queue as of this step (see_waiting)
        self._max_num_seqs: int | None = None  # the engine's sequence slots (set_limits)
        self._now = 0.0  # the clock as of the latest call (levels depend on it)
        self._prev_stats: Any = None  # the last step, learned once the next one starts
        # Waiting requests' urgency keys within one step (request id -> (now, key)), kept from
        # the entrant's pick to admission; None outside that span.
        self._urgencies: dict[str, tuple[float, tuple[bool, float, float]]] | None = None

    # ---- terms and schedule ---------------------------------------------------------------

    def terms(self, seq: Sequence) -> RequestTerms:
        """The request's terms at the level it can still reach as of the current step."""
        t = self._terms.get(seq.request_id)
        if t is None:
            t = RequestTerms.of(seq)
        elif t.final or len(t.levels) == 1:
            return t  # settled for good (asked several hundred times a step)
        settled = t.settled(seq, self._now)
        if settled is not t or seq.request_id not in self._terms:
            self._terms[seq.request_id] = settled
        return settled

    def due_at(self, seq: Sequence) -> float | None:
        """When the request's next token is due; None for best effort or before its first."""
        return self._due(seq, self.terms(seq))

    def deadline(self, seq: Sequence) -> float:
        """The time by which the request's next token should exist (TTFT, then pacing)."""
        return self._deadline(seq, self.terms(seq))

    def _due(self, seq: Sequence, t: RequestTerms) -> float | None:
        if t.speed is None or seq.first_token_time is None:
            return None
        return seq.first_token_time + seq.num_output_tokens / (t.speed * self.config.pace)

    def _deadline(self, seq: Sequence, t: RequestTerms) -> float:
        due = self._due(seq, t)
        if due is not None:
            return due
        return t.received_at + (t.ttft_s or self.config.best_effort_ttft_s)

    def weight(self, seq: Sequence) -> float:
        """Value weight: 1 for free work, growing with the log of the output price."""
        return _weight(self.terms(seq).price, self.config.value_unit)

    def urgency(self, seq: Sequence, now: float) -> tuple[bool, float, float]:
        """Sort key for prefill work and admission: deadlines still meetable first, then the
        dearest level, then the least slack. Value comes before the deadline: when prompt time
        is short, a cheaper prompt near its deadline must not take it from a dearer one that
        would then be late (prompts whose deadline is near run first anyway: `_urgent`)."""
        cache = self._urgencies
        hit = cache.get(seq.request_id) if cache is not None else None
        if hit is not None and hit[0] == now:
            return hit[1]
        # One `terms` lookup for deadline and weight: asked for every waiting request every
        # step, this is the policy's hottest call under a long queue.
        t = self.terms(seq)
        slack = self._deadline(seq, t) - now
        key = (slack < 0, -_weight(t.price, self.config.value_unit), slack)
        if cache is not None:
            cache[seq.request_id] = (now, key)
        return key

    def target_step_s(self, running: list[Sequence], now: float) -> float:
        """How long the next step may last without any paced request falling behind for good.

        A request may take a share of its lead (the time until its next token is due), and
        never less than `catch_up` of its token interval: carried in every step that short, a
        request that is late gains on its schedule each step, so lateness never compounds.
        """
        decoding = [(self.due_at(s), s) for s in running if not s.is_prefill]
        return self._target_from(decoding, now)

    def _target_from(self, decoding: list[tuple[float | None, Sequence]], now: float) -> float:
        """`target_step_s` over (due time, request) pairs already worked out."""
        cfg = self.config
        target = cfg.max_step_s
        for due, seq in decoding:
            if due is None:
                continue
            interval = 1.0 / (self.terms(seq).speed * cfg.pace)  # type: ignore[operator]
            target = min(target, max(cfg.slack_share * (due - now), cfg.catch_up * interval))
        return target

    # ---- the step -----------------------------------------------------------------------------

    def order_running(self, running: list[Sequence], now: float) -> list[Sequence]:
        cfg = self.config
        self._now = now
        self._steps += 1
        self._by_rank = None
        live = {s.request_id for s in running}
        for rid in [r for r in self._last_carried if r not in live]:
            self._last_carried.pop(rid, None)
        if len(self._terms) > 4 * len(running) + 64:  # drop finished requests' terms
            self._terms = {r: t for r, t in self._terms.items() if r in live}
            self._judged &= live
            self._queue_judged &= live | {s.request_id for s in self._waiting}

        coef = self.model.coefficients
        per_token = max(coef.per_prefill_token_s, 1e-9)
        min_step = self.model.predict(1, 0, 0)
        # Each decoding request's due time, once per step (and the prompts, in the same pass).
        decoding: list[tuple[float | None, Sequence]] = []
        prefill: list[Sequence] = []
        for s in running:
            if s.is_prefill:
                prefill.append(s)
            else:
                decoding.append((self.due_at(s), s))
        target = self._target_from(decoding, now)
        # Skipped now, a request's next chance ends after this step and a minimal next one.
        horizon = now + max(target, min_step) + min_step
        every = max(1, round(1 / cfg.min_share)) if cfg.min_share > 0 else None

        must: list[Sequence] = []  # not carried for 1 / min_share steps: carried now
        due: list[tuple[float, Sequence]] = []
        ahead: list[tuple[float, Sequence]] = []
        for at, seq in decoding:
            # First seen decoding: its prompt's last chunk ran (and sampled) last step.
            last = self._last_carried.setdefault(seq.request_id, self._steps - 1)
            starved = every is not None and self._steps - last >= every
            if starved:
                must.append(seq)
            elif at is not None and at <= horizon:
                due.append((at, seq))
            else:
                # Least ahead first; best effort after every paced request.
                ahead.append((at if at is not None else math.inf, seq))
        due.sort(key=lambda p: (p[0], -self.weight(p[1])))
        ahead.sort(key=lambda p: (p[0], -self.weight(p[1])))
        # The prompts this step's prefill budget is for: the running ones and the most urgent
        # waiting request that would be admitted (the scheduler admits after running work).
        entrant = self._entrant(running, now)
        budget_prefill = prefill if entrant is None else [*prefill, entrant]
        budget_prefill.sort(key=lambda s: self.urgency(s, now))

        carried = self._carry_due(must, due, target)
        kv = sum(s.num_tokens for s in carried)
        due_s = self.model.predict(len(carried), 0, kv)
        target = max(target, due_s)
        # Prompts in progress come before ahead decodes: the time the due decodes leave is
        # theirs first (a first token is worth more than running further ahead). A step that
        # computes any prompt token pays the prefill step cost once (decode-only steps take a
        # faster path), so prompts go in chunks worth that cost, or wait.
        fixed = coef.prefill_step_s
        pending = sum(s.num_uncomputed_tokens for s in budget_prefill)
        # At least as much prompt work as the fixed cost it pays (or all there is); a chunk
        # taken when there is room waits for `prefill_worth` times that: short decode-only
        # steps meanwhile put the paced requests ahead, and their lead pays for a long step.
        least = max(cfg.min_prefill_tokens, math.ceil(fixed / per_token))
        least = min(pending, least) if pending else cfg.min_prefill_tokens
        worth = max(least, min(pending, math.ceil(cfg.prefill_worth * fixed / per_token)))
        room = int((target - due_s - fixed) / per_token)
        reserved = min(pending, room) if room >= worth else 0
        for _, seq in ahead:
            # Work-conserving: a step that would otherwise be empty carries someone.
            cost = self.model.predict(len(carried) + 1, reserved, kv + seq.num_tokens)
            if carried and cost > target:
                break
            carried.append(seq)
            kv += seq.num_tokens
        for seq in carried:
            self._last_carried[seq.request_id] = self._steps

        # Prefill (and admissions) get what is left of the step.
        spare = target - self.model.predict(len(carried), reserved, kv)
        if reserved:
            prefill_tokens = reserved + max(0, int(spare / per_token))
        else:
            room = int((spare - fixed) / per_token)
            prefill_tokens = room if room >= worth else 0
        paced = any(self.terms(s).speed is not None for s in carried)
        if not paced or (every is not None and self._steps % every == 0):
            # Nobody's pace at stake, or the prompts' minimum share of steps: a chunk worth it.
            prefill_tokens = max(least, prefill_tokens)
        # Prompts whose TTFT deadline is near run whole now, even if the step then runs long.
        # Prompts worth as much as the dearest decode carried may lengthen the step as far as
        # they need; cheaper ones only as far as every paced decode can absorb (a cheaper
        # first token does not pay for a dearer promise's miss).
        floor = max((self.weight(s) for s in carried), default=0.0)
        dear = [s for s in budget_prefill if self.weight(s) >= floor]
        urgent_dear = self._urgent(dear, now, carried, kv, target)
        prefill_tokens = max(prefill_tokens, sum(s.num_uncomputed_tokens for s in urgent_dear))
        urgent = self._urgent(budget_prefill, now, carried, kv, target)
        cheap = sum(s.num_uncomputed_tokens for s in urgent)
        if cheap > prefill_tokens:
            limit = self._absorbable_s(carried, now, min_step)
            room = limit - self.model.predict(len(carried), max(1, prefill_tokens), kv)
            prefill_tokens += max(0, min(cheap - prefill_tokens, int(room / per_token)))
        self._cap = len(carried) + prefill_tokens
        self._refused_rank, self._refused_seq = -1, None
        return carried + self._fund(urgent, budget_prefill, entrant, prefill_tokens)

    def _fund(
        self,
        urgent: list[Sequence],
        prompts: list[Sequence],
        entrant: Sequence | None,
        tokens: int,
    ) -> list[Sequence]:
        """The running prompts to serve, in order: urgent ones first (dearest first), then by
        urgency. Decodes come before them, so the step's cap goes to prompts in this order.
        When the entrant (a waiting request) is funded before some running prompts, those
        step aside for this step so that the budget left reaches its admission."""
        first = sorted(urgent, key=lambda s: -self.weight(s))
        order = [*first, *(s for s in prompts if s not in first)]
        if entrant is None or entrant not in order:
            return order
        funded = []
        for seq in order:
            if tokens <= 0:
                break
            funded.append(seq)
            tokens -= seq.num_uncomputed_tokens
        if entrant not in funded:
            return [s for s in order if s is not entrant]
        return [s for s in funded if s is not entrant]

    def _urgent(
        self,
        prompts: list[Sequence],
        now: float,
        carried: list[Sequence],
        kv: int,
        target: float,
    ) -> list[Sequence]:
        """The `prompts` (most urgent first) that must run whole this step: a
        prompt is urgent once `ttft_safety` of the time left before its TTFT deadline is no
        more than this step (with it whole) and one more. Noise and the model's error must not
        turn a just-in-time first token into a late one. Prompts of the dearest first tokens
        (`at_once_usd_per_mtok`) are urgent from the start: their TTFTs are the shortest and
        a miss costs the most, so waiting for the deadline only spends their margin."""
        share = self.config.ttft_safety
        at_once = self.config.at_once_usd_per_mtok * 1_000_000  # prices are in micro-USD
        total = 0
        urgent = []
        for seq in prompts:
            n = seq.num_uncomputed_tokens
            finish = self.model.predict(len(carried), total + n, kv)
            left = self.deadline(seq) - now
            if 0 < left and (share * left <= finish + target or self.terms(seq).price >= at_once):
                total += n
                urgent.append(seq)
        return urgent

    def _carry_due(
        self, must: list[Sequence], due: list[tuple[float, Sequence]], target: float
    ) -> list[Sequence]:
        """The due requests this step carries: all of them unless that makes the step longer
        than the dearest due request's token interval (overload: it would fall behind for
        good). Then the dearest tier's and the starving ones always, and the others by value
        while the step still fits: cheaper work falls behind first."""
        carried = [*must, *(s for _, s in due)]
        if not due:
            return carried
        by_value = sorted(due, key=lambda p: (-self.weight(p[1]), p[0]))
        top = self.weight(by_value[0][1])
        speed = max(self.terms(s).speed or 0.0 for _, s in due if self.weight(s) == top)
        limit = max(target, 1.0 / (speed * self.config.pace)) if speed > 0 else math.inf
        kv = sum(s.num_tokens for s in carried)
        if self.model.predict(len(carried), 0, kv) <= limit:
            return carried
        carried = [*must]
        kv = sum(s.num_tokens for s in carried)
        for _, seq in by_value:
            if self.weight(seq) < top:
                cost = self.model.predict(len(carried) + 1, 0, kv + seq.num_tokens)
                if cost > limit:
                    continue
            carried.append(seq)
            kv += seq.num_tokens
        return carried

    def _absorbable_s(self, carried: list[Sequence], now: float, min_step: float) -> float:
        """The longest step every carried paced request can absorb and still end on its
        schedule: its lead, plus what its remaining tokens can win back on short steps (each
        one's interval minus a minimal step)."""
        cfg = self.config
        limit = cfg.max_step_s
        for seq in carried:
            due = self.due_at(seq)
            if due is None:
                continue
            interval = 1.0 / (self.terms(seq).speed * cfg.pace)  # type: ignore[operator]
            left = (seq.params.max_tokens or cfg.unbounded_max_tokens) - seq.num_output_tokens
            limit = min(limit, due - now + max(0, left - 1) * max(0.0, interval - min_step))
        return limit

    def _entrant(self, running: list[Sequence], now: float) -> Sequence | None:
        """The most urgent waiting request, when it would be admitted now."""
        waiting, self._waiting = self._waiting, []
        if not waiting:
            return None
        # The waiting requests' keys hold until this step's admission (`order_waiting`).
        self._urgencies = {}
        first = min(waiting, key=lambda s: self.urgency(s, now))
        return first if self._fits(first, running, now) else None

    def step_token_budget(self, now: float) -> int | None:
        return self._cap

    def order_waiting(self, waiting: list[Sequence], now: float) -> list[Sequence]:
        self._now = now
        try:
            return sorted(waiting, key=lambda s: self.urgency(s, now))
        finally:
            self._urgencies = None

    # ---- admission ------------------------------------------------------------------------------

    def may_admit(self, seq: Sequence, running: list[Sequence], now: float) -> bool:
        self._now = now
        rank = self.terms(seq).rank
        # No overtaking: once a request waits for capacity, cheaper tiers wait behind it
        # (except the lowest tier's minimum share).
        if running and rank < self._refused_rank and not self._free_share_due(seq, running):
            return False
        if self._fits(seq, running, now) or self._downgrade(seq, running, now):
            return True
        if rank > self._refused_rank:
            self._refused_rank, self._refused_seq = rank, seq
        return False

    def _fits(self, seq: Sequence, running: list[Sequence], now: float) -> bool:
        cfg = self.config
        terms = self.terms(seq)
        rank = terms.rank
        if not running:
            # An idle engine takes anything: a request whose promise cannot be kept even
            # alone must still run (at the best speed there is), never wait forever.
            return True
        if seq.metadata.get("sheddable") and self._max_num_seqs is not None:
            # Slow sheddable work must not hold every sequence slot: dearer work needs some.
            if len(running) >= cfg.sheddable_slot_share * self._max_num_seqs:
                return False
        if self._free_share_due(seq, running):
            return True
        base = self._load_from(rank, running)
        if base.count == 0:
            # Nothing of its tier or dearer runs: waiting cannot make it fit better (cheaper
            # work is not counted; it yields to this request step by step).
            return True
        busy = self._busy_with(base, seq)
        if busy <= cfg.max_utilization:
            return True
        # Waiting longer would cost it its TTFT: admit it while the load is still possible
        # at all (the margin is for noise; missing the first token for sure is worse).
        waited = now - terms.received_at
        return waited >= cfg.last_call * (terms.ttft_s or cfg.best_effort_ttft_s) and busy <= 1.0

    def _downgrade(self, seq: Sequence, running: list[Sequence], now: float) -> bool:
        """A request that asked for `service_tier=auto` (metadata "downgradable") and does not
        fit at its level starts now at the best slower level that fits, instead of waiting:
        from then on it is paced, valued and billed at that tier. Requests that named their
        tier wait for it."""
        if not seq.metadata.get("downgradable"):
            return False
        terms = self.terms(seq)  # settled: its level's TTFT, the shortest left, is not past
        for i in range(terms.level + 1, len(terms.levels)):
            # It starts now: its first token keeps the deadline it had (a slower tier's
            # longer TTFT would let its prompt wait, so it would start later, not sooner).
            levels = list(terms.levels)
            levels[i] = replace(levels[i], ttft_s=terms.ttft_s)
            self._terms[seq.request_id] = replace(
                terms, levels=tuple(levels), level=i, final=True
            )
            if self._fits(seq, running, now):
                return True
        self._terms[seq.request_id] = terms
        return False

    def _free_share_due(self, seq: Sequence, running: list[Sequence]) -> bool:
        """A lowest-tier request while fewer than `min_free_running` of them run."""
        n = self.config.min_free_running
        if n <= 0 or self.terms(seq).rank != 0:
            return False
        return sum(1 for s in running if self.terms(s).rank == 0) < n

    def see_waiting(self, waiting: list[Sequence], now: float) -> None:
        self._waiting = waiting
        self._now = now

    def set_limits(self, max_num_seqs: int) -> None:
        self._max_num_seqs = max_num_seqs

    def utilization(self, seqs: list[Sequence]) -> float:
        """Predicted busy share of the engine's time if `seqs` all keep their promises."""
        return self._busy(self._sum(seqs))

    def _sum(self, seqs: list[Sequence]) -> _Load:
        load = _Load()
        for seq in seqs:
            load.add(self._load_of(seq))
        return load

    def _busy_with(self, base: _Load, seq: Sequence) -> float:
        """Busy share with `seq` added to `base`: the worse of its two phases, its prompt
        (spread over its TTFT) and its decode (its promise sets the step rate from then on)."""
        own = self._load_of(seq)
        prompt = _Load(prefill_s=own.prefill_s)
        own.prefill_s = 0.0
        worst = 0.0
        for phase in (prompt, own):
            load = _Load()
            load.add(base)
            load.add(phase)
            worst = max(worst, self._busy(load))
        return worst

    def _busy(self, load: _Load) -> float:
        """Steps must come as often as the fastest promise needs, each paying the fixed
        cost; every promised token costs its decode; best-effort requests get their share of
        those steps; prompts still to run must be done within their TTFT."""
        cfg = self.config
        c = self.model.coefficients
        rate = load.max_speed * cfg.pace if load.max_speed > 0 else 1.0 / cfg.max_step_s
        return (
            rate * c.base_s
            + load.decode_s
            + cfg.min_share * rate * load.best_effort_s
            + load.prefill_s
        )

    def _load_of(self, seq: Sequence) -> _Load:
        c = self.model.coefficients
        t = self.terms(seq)
        per_token = c.per_decode_s + c.per_kv_token_s * seq.num_tokens
        load = _Load(count=1)
        if t.speed is None:
            load.best_effort_s = per_token
        else:
            load.max_speed = t.speed
            load.decode_s = t.speed * self.config.pace * per_token
        pending = seq.num_uncomputed_tokens
        if pending > 1:
            load.prefill_s = (
                c.per_prefill_token_s * pending / (t.ttft_s or self.config.best_effort_ttft_s)
            )
        return load

    def _load_from(self, rank: int, running: list[Sequence]) -> _Load:
        """The load of running requests of `rank` and dearer ones (kept per step, by rank,
        and brought up to date with requests admitted since)."""
        if self._by_rank is None:
            self._by_rank, self._counted = {}, set()
        for seq in running:
            if seq.request_id not in self._counted:
                self._counted.add(seq.request_id)
                r = self.terms(seq).rank
                self._by_rank.setdefault(r, _Load()).add(self._load_of(seq))
        total = _Load()
        for r, load in self._by_rank.items():
            if r >= rank:
                total.add(load)
        return total

    # ---- shedding -------------------------------------------------------------------------------

    def retry_after_s(self, seq: Sequence, running: list[Sequence], now: float) -> float | None:
        """How long until `seq` would be admissible: None if it is now, math.inf if never.

        Running requests of its tier and dearer ones are assumed to finish at their promised
        pace (best effort: at its minimum share of the steps), so the estimate errs long: a
        basis for Retry-After.
        """
        cfg = self.config
        rank = self.terms(seq).rank
        others = [s for s in running if self.terms(s).rank >= rank]
        if self._busy_with(self._sum(others), seq) <= cfg.max_utilization:
            return None
        if self._busy_with(_Load(), seq) > cfg.max_utilization:
            return math.inf
        speeds = [s for s in (self.terms(q).speed for q in [*others, seq]) if s is not None]
        rate = max(speeds) * cfg.pace if speeds else 1.0 / cfg.max_step_s
        ends = []
        for other in others:
            left = other.params.max_tokens or cfg.unbounded_max_tokens
            left = max(0, left - other.num_output_tokens) + max(0, other.num_uncomputed_tokens - 1)
            speed = self.terms(other).speed or cfg.min_share * rate
            ends.append((left / speed, other.request_id))
        ends.sort()
        gone: set[str] = set()
        for wait, rid in ends:
            gone.add(rid)
            remaining = [s for s in others if s.request_id not in gone]
            if self._busy_with(self._sum(remaining), seq) <= cfg.max_utilization:
                return wait
        return math.inf  # unreachable: alone it fits

    def shed(self, seq: Sequence, running: list[Sequence], now: float) -> float | None:
        """A sheddable request (metadata "sheddable") that cannot be admitted on arrival is
        refused at once, with the model's estimate of when it could be (capped), when dearer
        work is already waiting for capacity or it could not start within `shed_wait_share`
        of its TTFT; otherwise it waits. Judged once, on arrival."""
        if not seq.metadata.get("sheddable") or seq.request_id in self._judged:
            return None
        self._judged.add(seq.request_id)
        cfg = self.config
        terms = self.terms(seq)
        waiting = self._refused_seq
        if waiting is not None and self.terms(waiting).rank > terms.rank:
            # Dearer work waits for capacity, and this tier would wait behind it: capacity is
            # gone for this tier. Hint when that waiting request could start.
            retry = self.retry_after_s(waiting, running, now) or 1.0
        else:
            retry = self.retry_after_s(seq, running, now)
            budget = (terms.ttft_s or cfg.best_effort_ttft_s) * cfg.shed_wait_share
            if retry is None or retry <= budget:
                return None
        return min(max(retry, 1.0), cfg.max_retry_after_s)

    def shed_queued(
        self, waiting: list[Sequence], running: list[Sequence], now: float
    ) -> list[tuple[Sequence, float]]:
        """Sheddable arrivals that would get their first token too late behind the queue.

        Admission weighs running work; the queue is invisible to it, and where prompts
        arrive faster than the engine computes them (a GPU whose fastest promise leaves
        little of each step to prompts) it grows while every admission still looks fine.
        So each new sheddable arrival is judged once: the prompt tokens of the running
        prompts and of the requests it queues behind (those admitted before it) over the
        rate queued prompts were computed lately predict its first token; when that is more
        than `queue_shed_share` of the time left to its TTFT, it is refused now, with that
        wait as Retry-After, instead of served late."""
        share = self.config.queue_shed_share
        if share <= 0:
            return []
        fresh = [
            s
            for s in waiting
            if s.request_id not in self._queue_judged
            and s.metadata.get("sheddable")
            and s.first_scheduled_time is None
        ]
        if not fresh:
            return []
        self._queue_judged.update(s.request_id for s in fresh)
        if self._prompt_rate.tokens_per_s() is None:
            return []
        self._now = now
        new = {s.request_id for s in fresh}
        ahead = sum(s.num_uncomputed_tokens for s in running if s.is_prefill)
        refused = []
        for seq in sorted(waiting, key=lambda s: self.urgency(s, now)):
            ahead += seq.num_uncomputed_tokens
            if seq.request_id not in new:
                continue
            wait = self._prompt_rate.wait_s(ahead)
            if wait is not None and wait > share * (self.deadline(seq) - now):
                refused.append((seq, min(max(wait, 1.0), self.config.max_retry_after_s)))
                ahead -= seq.num_uncomputed_tokens  # refused: no longer ahead of anyone
        return refused

    def preemption_victim(self, candidates: list[Sequence]) -> Sequence:
        """Lowest value first: lowest rank, then cheapest, then the newest arrival."""
        return min(
            candidates,
            key=lambda s: (self.terms(s).rank, self.terms(s).price, -s.arrival_time),
        )

    def set_step_prior(self, prior: StepCoefficients) -> None:
        self.model.set_prior(prior)

    def on_step(self, stats: Any) -> None:
        """Learn what a step costs as the schedule feels it: from one step's start to the
        next one's while work was waiting, so the engine loop's time between steps (handing
        tokens to the server, the server's own thread) counts too; pacing by the step's
        compute time alone would fall short by that much. Learned one step late."""
        if stats is None:
            return
        self._prompt_rate.observe(stats.duration_s, stats.num_prefill_tokens, stats.num_waiting)
        prev, self._prev_stats = self._prev_stats, stats
        if prev is None:
            return
        period = prev.duration_s
        if prev.num_running + prev.num_waiting > 0:  # no idle wait between the two steps
            gap = stats.started_at - prev.started_at
            if prev.duration_s <= gap <= prev.duration_s + self.config.max_step_gap_s:
                period = gap
        self.model.observe(
            period, prev.num_decode_tokens, prev.num_prefill_tokens, prev.num_kv_tokens_read
        )


@functools.lru_cache(maxsize=64)
def _weight(price: int, value_unit: float) -> float:
    return 1.0 + math.log2(1.0 + price / value_unit)


def _positive(value: object) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return float(value)
    return None
