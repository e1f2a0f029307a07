"""What the engine hands back: a delta per request per step, or a whole finished request."""

from __future__ import annotations

from dataclasses import dataclass, field

from tokenfactory.engine.sampling.logprobs import TokenLogprob
from tokenfactory.engine.sequence import FinishReason


@dataclass
class RequestOutput:
    """What one step produced for one request: a delta, plus totals so far."""

    request_id: str
    token_ids: list[int]  # new tokens this step
    text: str  # new text this step (held back near a possible stop string)
    logprobs: list[TokenLogprob] | None
    finished: bool
    finish_reason: FinishReason | None
    stop_reason: str | int | None
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    arrival_time: float
    first_token_time: float | None
    finished_time: float | None
    first_scheduled_time: float | None = None  # when it first ran: queue time = this - arrival
    retry_after_s: float | None = None  # set when the request was shed on arrival


@dataclass
class Completion:
    """A whole finished request, as `Engine.generate` returns it."""

    request_id: str
    text: str
    token_ids: list[int]
    finish_reason: FinishReason | None
    stop_reason: str | int | None
    prompt_tokens: int
    cached_tokens: int
    logprobs: list[TokenLogprob] = field(default_factory=list)
