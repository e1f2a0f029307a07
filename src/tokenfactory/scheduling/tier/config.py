"""The `tier` policy's settings (defaults as shipped; docs/scheduling.md explains each)."""

from __future__ import annotations

from dataclasses import dataclass


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
    # A sheddable request still queued, never run, this share of its TTFT past its TTFT is
    # refused (None: never; see `shed_overdue`).
    overdue_share: float | None = 0.0
    # Speculative decoding: the share of a step's expected throughput that the drafts of paying
    # requests behind their promise may cost (drafts that pay for themselves cost nothing).
    speculation_throughput_cost: float = 0.05
