"""Sequence: one request's tokens and progress as it moves through the engine."""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

from tokenfactory.engine.sampling_params import SamplingParams
from tokenfactory.tiers import ServiceTerms


class SequenceStatus(enum.Enum):
    WAITING = "waiting"  # queued, or preempted and waiting to be recomputed
    RUNNING = "running"  # holds KV blocks and is scheduled each step it is due
    FINISHED = "finished"


class FinishReason(enum.StrEnum):
    STOP = "stop"  # EOS, a stop string or a stop token
    LENGTH = "length"  # max_tokens or the context window
    ABORT = "abort"  # the caller went away or cancelled
    SHED = "shed"  # refused on arrival: a sheddable tier and no capacity (see the policy)


@dataclass(eq=False)
class Sequence:
    """A request inside the engine.

    `num_computed_tokens` counts tokens whose K/V sit in the cache; the scheduler advances it
    by the chunk it schedules. After preemption it drops to 0 (recompute) while the output
    tokens generated so far are kept, so the request resumes exactly where it was.
    """

    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    output_token_ids: list[int] = field(default_factory=list)
    status: SequenceStatus = SequenceStatus.WAITING
    block_table: list[int] = field(default_factory=list)
    num_computed_tokens: int = 0
    num_cached_tokens: int = 0  # prompt tokens served from the prefix cache at first admission
    num_preemptions: int = 0
    finish_reason: FinishReason | None = None
    stop_reason: str | int | None = None  # the stop string or token id that ended it
    arrival_time: float = field(default_factory=time.monotonic)
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    finished_time: float | None = None
    # What the request was sold (tier, promise, price), built by the server; None: best
    # effort. A scheduling policy reads it; a downgrade replaces it.
    terms: ServiceTerms | None = None
    last_scheduled_step: int | None = None  # the scheduler's step index it last ran in
    seen_by_plan: bool = False  # a scheduling plan has seen it (False: a new arrival)
    judged_on_arrival: bool = False  # a scheduling plan judged it on arrival (shedding)
    # Speculative decoding: draft tokens verified so far, and how many of them were accepted.
    num_draft_tokens: int = 0
    num_accepted_draft_tokens: int = 0

    @property
    def max_tokens(self) -> int | None:
        return self.params.max_tokens

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def all_token_ids(self) -> list[int]:
        return self.prompt_token_ids + self.output_token_ids

    def token_at(self, i: int) -> int:
        n = len(self.prompt_token_ids)
        return self.prompt_token_ids[i] if i < n else self.output_token_ids[i - n]

    @property
    def num_uncomputed_tokens(self) -> int:
        """Tokens still to run through the model before the next token can be sampled."""
        return self.num_tokens - self.num_computed_tokens

    @property
    def is_prefill(self) -> bool:
        """True while more than one token is pending (prompt, or recompute after preemption)."""
        return self.num_uncomputed_tokens > 1

    def has_last_token(self, max_model_len: int | None) -> bool:
        """No token may follow the ones it has: max_tokens reached or the context window
        full (what the stop checker ends a request for, with FinishReason.LENGTH)."""
        max_tokens = self.params.max_tokens
        if max_tokens is not None and self.num_output_tokens >= max_tokens:
            return True
        return max_model_len is not None and self.num_tokens >= max_model_len

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED
