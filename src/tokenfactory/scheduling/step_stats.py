"""What one engine step did and how long it took: plain data, shared by the engine (which
records it), the scheduling policies (which learn step costs from it) and the simulator."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class StepStats:
    started_at: float  # time.monotonic() at step start
    duration_s: float
    num_seqs: int  # sequences in the step
    num_decode_tokens: int
    num_prefill_tokens: int
    num_kv_tokens_read: int  # sum of context lengths attended over
    num_sampled: int
    num_preempted: int
    num_waiting: int
    num_running: int
    kv_usage: float  # fraction of KV blocks held by sequences after the step
    # Of duration_s, the host time the scheduler and its policy took to plan the step (on a
    # GPU a Python policy's cost shows here, next to a step of a few milliseconds).
    schedule_s: float = 0.0
    # Speculative decoding: draft tokens verified in the step (beyond each decode's own
    # token, not in num_decode_tokens), and how many of them were accepted.
    num_draft_tokens: int = 0
    num_accepted_tokens: int = 0
    # Asynchronous scheduling: the next step was planned and queued before this one's tokens
    # reached the host (duration_s then ends when they could first be read there).
    ran_ahead: bool = False

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)
