"""What a scheduling policy sees and what it returns: one immutable view in, one plan out.

A policy is one call per step, `plan(view) -> StepPlan`. The view holds the queue, the running
set, the engine's limits, the KV room, the clock and the previous step's record; requests are
seen through `RequestView`, a read-only protocol the engine's `Sequence` satisfies, so nothing
is copied per step. The plan says which running requests step (in order, under a token cap,
each optionally capped in query tokens), which waiting ones are admitted (in order, as far as
room lasts), which are refused with what Retry-After, which take a slower tier, and in which
order running requests are preempted when KV blocks run short. Decisions come back as values;
the scheduler applies them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from collections.abc import Sequence as SequenceABC
from dataclasses import dataclass, field
from typing import Any, Protocol

from tokenfactory.scheduling.step_stats import StepStats
from tokenfactory.tiers import ServiceTerms


class RequestView(Protocol):
    """One request as a policy may read it (the engine's `Sequence` is one)."""

    @property
    def request_id(self) -> str: ...
    @property
    def arrival_time(self) -> float: ...
    @property
    def terms(self) -> ServiceTerms | None: ...  # None: best effort (offline use)
    @property
    def max_tokens(self) -> int | None: ...
    @property
    def num_tokens(self) -> int: ...
    @property
    def num_output_tokens(self) -> int: ...
    @property
    def num_uncomputed_tokens(self) -> int: ...
    @property
    def is_prefill(self) -> bool: ...
    @property
    def num_preemptions(self) -> int: ...
    @property
    def first_scheduled_time(self) -> float | None: ...
    @property
    def first_token_time(self) -> float | None: ...
    @property
    def last_scheduled_step(self) -> int | None: ...  # the step index it last ran in
    @property
    def seen_by_plan(self) -> bool: ...  # a plan has seen it (False: a new arrival)
    @property
    def judged_on_arrival(self) -> bool: ...  # a plan judged it on arrival (`StepPlan.judged`)
    @property
    def num_draft_tokens(self) -> int: ...  # speculative draft tokens verified so far
    @property
    def num_accepted_draft_tokens(self) -> int: ...  # of those, accepted


def is_new_arrival(request: RequestView) -> bool:
    """Never planned before and never run."""
    return not request.seen_by_plan and request.first_scheduled_time is None


def awaits_arrival_judgement(request: RequestView) -> bool:
    """Never run, and no plan has judged it on arrival yet (it may not have reached it)."""
    return (
        not request.judged_on_arrival
        and request.first_scheduled_time is None
        and request.num_preemptions == 0
    )


@dataclass(frozen=True)
class SchedulerView:
    now: float  # the clock the plan is made at (monotonic seconds, or simulated)
    step_index: int  # this step's number; `last_scheduled_step` counts on the same scale
    running: tuple[RequestView, ...]  # hold KV blocks, in the order they were admitted
    waiting: tuple[RequestView, ...]  # queued or preempted, in queue order
    max_num_seqs: int
    max_num_batched_tokens: int
    chunked_prefill: bool
    free_blocks: int
    block_size: int
    last_step: StepStats | None = None  # the step that ran since the previous plan
    # Speculative decoding: the most draft tokens a request may verify in one step (0: the
    # engine has no proposer), and the share of draft tokens accepted lately, engine-wide
    # (None before any was verified).
    max_draft_tokens: int = 0
    draft_acceptance: float | None = None


@dataclass(frozen=True)
class Refusal:
    """A waiting request ended at once as shed (HTTP 429), told to retry after this long."""

    request: RequestView
    retry_after_s: float


@dataclass(frozen=True)
class Downgrade:
    """A waiting request that starts at a slower tier: from now on it is scheduled by these
    terms (the scheduler puts them on the request)."""

    request: RequestView
    terms: ServiceTerms


@dataclass(frozen=True)
class StepPlan:
    run: tuple[RequestView, ...]  # running requests to step, in order; the rest skip this step
    admit: tuple[RequestView, ...]  # waiting requests to admit, in order, while room lasts
    preempt_order: SequenceABC[RequestView]  # running requests, first preempted first
    token_budget: int | None = None  # a cap on the step's tokens (applied with chunked prefill)
    refuse: tuple[Refusal, ...] = ()
    downgrade: tuple[Downgrade, ...] = ()
    # Waiting requests judged on arrival and let wait: no later plan judges them so again.
    judged: tuple[RequestView, ...] = ()
    # Caps on the query tokens of running requests this step, by request id (absent: as many
    # as it has pending and the budget allows). A plain mapping, not an object per request:
    # a plan is made every step, over hundreds of requests.
    query_caps: Mapping[str, int] = field(default_factory=dict)
    # Draft tokens each decoding request may verify this step, by request id (absent: 0, a
    # plain decode). Capped by the view's max_draft_tokens; the proposer may find fewer.
    # They come on top of the token budget (prompts are chunked the same with or without).
    draft_tokens: Mapping[str, int] = field(default_factory=dict)


class SortedOnDemand(SequenceABC[RequestView]):
    """`requests` sorted by `key`, sorted only if read: a preemption order is needed only in
    the rare step whose KV blocks run out, and sorting every running request every step would
    cost more than the rest of a plan."""

    def __init__(
        self,
        requests: SequenceABC[RequestView],
        key: Callable[[RequestView], Any],
        reverse: bool = False,
    ):
        self._requests = requests
        self._key = key
        self._reverse = reverse
        self._sorted: list[RequestView] | None = None

    def _items(self) -> list[RequestView]:
        if self._sorted is None:
            # Stable: among equal keys, the order given (reversed or not) is kept.
            self._sorted = sorted(self._requests, key=self._key, reverse=self._reverse)
        return self._sorted

    def __getitem__(self, i):  # type: ignore[no-untyped-def]
        return self._items()[i]

    def __len__(self) -> int:
        return len(self._requests)

    def __iter__(self) -> Iterator[RequestView]:
        return iter(self._items())


def chunk_tokens(
    pending: int, budget: int, chunked_prefill: bool, step_empty: bool, max_batched: int
) -> int:
    """Query tokens a request with `pending` uncomputed tokens runs when `budget` is left:
    0 when it must wait. The scheduler applies it, and policies that plan admissions use it to
    see where the budget runs out."""
    if pending <= budget:
        return pending
    if chunked_prefill:
        return budget
    # Without chunking a prompt runs whole. One larger than the whole step budget would never
    # fit, so it may run alone in a step of its own.
    if step_empty and pending > max_batched:
        return pending
    return 0
