"""One plan's reading of the requests: terms at their level, deadlines, value and load.

Built afresh for every plan from the view, the policy's settings and its step-time model, and
dropped after it: caches here hold only what is true at this plan's clock (asked for several
hundred times a step, the policy's hottest lookups).
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenfactory.scheduling.step_model import StepCoefficients, StepTimeModel
from tokenfactory.scheduling.tier.config import TierPolicyConfig
from tokenfactory.scheduling.tier.load import Load, busy_share, busy_share_with, request_load
from tokenfactory.scheduling.tier.terms import (
    BEST_EFFORT_TERMS,
    received_at,
    settled_level,
    value_weight,
)
from tokenfactory.scheduling.view import RequestView
from tokenfactory.tiers import Promise, ServiceTerms

Urgency = tuple[bool, float, float]


class PlanContext:
    def __init__(
        self, now: float, config: TierPolicyConfig, model: StepTimeModel, max_num_seqs: int
    ):
        self.now = now
        self.config = config
        self.model = model
        self.coef: StepCoefficients = model.coefficients
        self.max_num_seqs = max_num_seqs
        self._levels: dict[str, Promise] = {}
        self._terms: dict[str, ServiceTerms] = {}  # terms tried in place of a request's own
        self._urgency: dict[str, Urgency] = {}
        self._by_rank: dict[int, Load] = {}  # running load by rank (see load_from)
        self._counted: set[str] = set()

    # ---- terms --------------------------------------------------------------------------------

    def terms(self, r: RequestView) -> ServiceTerms:
        if self._terms:
            tried = self._terms.get(r.request_id)
            if tried is not None:
                return tried
        return r.terms if r.terms is not None else BEST_EFFORT_TERMS

    def level(self, r: RequestView) -> Promise:
        """The promise the request can still be billed at, as of this plan."""
        level = self._levels.get(r.request_id)
        if level is None:
            level = self._levels[r.request_id] = settled_level(r, self.terms(r), self.now)
        return level

    def try_terms(self, r: RequestView, terms: ServiceTerms | None) -> None:
        """Read `r` by `terms` from now on in this plan (None: by its own again)."""
        if terms is None:
            self._terms.pop(r.request_id, None)
        else:
            self._terms[r.request_id] = terms
        self._levels.pop(r.request_id, None)
        self._urgency.pop(r.request_id, None)

    def rank(self, r: RequestView) -> int:
        return self.terms(r).rank

    def weight(self, r: RequestView) -> float:
        return value_weight(self.level(r).output_price, self.config.value_unit)

    # ---- schedule ---------------------------------------------------------------------------

    def due_at(self, r: RequestView) -> float | None:
        """When the request's next token is due; None for best effort or before its first."""
        speed = self.level(r).tokens_per_s
        if speed is None or r.first_token_time is None:
            return None
        return r.first_token_time + r.num_output_tokens / (speed * self.config.pace)

    def deadline(self, r: RequestView) -> float:
        """The time by which the request's next token should exist (TTFT, then pacing)."""
        due = self.due_at(r)
        if due is not None:
            return due
        ttft = self.level(r).ttft_s or self.config.best_effort_ttft_s
        return received_at(r, self.terms(r)) + ttft

    def urgency(self, r: RequestView) -> Urgency:
        """Sort key for prefill work and admission: deadlines still meetable first, then the
        dearest level, then the least slack. Value comes before the deadline: when prompt time
        is short, a cheaper prompt near its deadline must not take it from a dearer one that
        would then be late (prompts whose deadline is near run first anyway: `urgent`)."""
        key = self._urgency.get(r.request_id)
        if key is None:
            slack = self.deadline(r) - self.now
            key = (slack < 0, -self.weight(r), slack)
            self._urgency[r.request_id] = key
        return key

    def interval(self, r: RequestView) -> float:
        """Seconds between two of a paced request's tokens."""
        speed = self.level(r).tokens_per_s
        assert speed is not None
        return 1.0 / (speed * self.config.pace)

    # ---- load -------------------------------------------------------------------------------

    def load_of(self, r: RequestView) -> Load:
        return request_load(
            self.level(r), r.num_tokens, r.num_uncomputed_tokens, self.coef, self.config
        )

    def sum_load(self, requests: Iterable[RequestView]) -> Load:
        load = Load()
        for r in requests:
            load.add(self.load_of(r))
        return load

    def busy(self, load: Load) -> float:
        return busy_share(load, self.coef, self.config)

    def busy_with(self, base: Load, r: RequestView) -> float:
        return busy_share_with(base, self.load_of(r), self.coef, self.config)

    def load_from(self, rank: int, running: Iterable[RequestView]) -> Load:
        """The load of running requests of `rank` and dearer ones (kept by rank for the plan,
        and brought up to date with requests admitted since)."""
        for r in running:
            if r.request_id not in self._counted:
                self._counted.add(r.request_id)
                self._by_rank.setdefault(self.rank(r), Load()).add(self.load_of(r))
        total = Load()
        for k, load in self._by_rank.items():
            if k >= rank:
                total.add(load)
        return total
