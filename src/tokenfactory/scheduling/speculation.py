"""How many draft tokens each decoding request verifies this step: speculation as a
scheduling decision.

A verified draft token costs step time (a row beside its decode's, `per_draft_token_s` in the
step-time model) and emits a token only if it and every draft token before it are accepted:
the i-th draft token of a request with acceptance rate a is worth a^i tokens. Increments are
taken best first (the highest weighted expected gain), one draft token at a time:

- an increment that pays for itself (its expected tokens per second of step time it adds
  beat the step's average rate) is always taken: at batch 1 speculation is free speed;
- an increment that costs throughput is taken only for requests that buy speed (the tier
  policy's paced tiers that one token per step leaves behind their promise), and only while
  the step's expected tokens per second stay within `throughput_cost` of the plan without
  speculation.

fcfs and priority call it with every decoding request at weight 1 and no throughput to spend:
the same rule for everyone, so the policies can be compared with speculation on.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass

from tokenfactory.scheduling.acceptance import DEFAULT_ACCEPTANCE, request_acceptance
from tokenfactory.scheduling.step_model import StepCoefficients, StepTimeModel
from tokenfactory.scheduling.step_stats import StepStats
from tokenfactory.scheduling.view import RequestView, SchedulerView

# An increment "pays for itself" only with this margin over the step's average rate: the
# acceptance and the draft cost are estimates, and a draft that only breaks even is not worth
# the chance of making a request slower.
PAYS_MARGIN = 1.25


@dataclass(frozen=True)
class DraftCandidate:
    request: RequestView
    weight: float = 1.0  # what one of its tokens is worth relative to the others
    buys_speed: bool = False  # may spend throughput (within the budget) on its drafts


@dataclass(frozen=True)
class StepEstimate:
    """The step as planned without speculation: its predicted length and tokens emitted."""

    step_s: float
    tokens: float
    draft_token_s: float  # what each verified draft token adds to the step


def plan_draft_tokens(
    candidates: Sequence[DraftCandidate],
    step: StepEstimate,
    max_draft_tokens: int,
    engine_acceptance: float | None,
    throughput_cost: float = 0.0,
) -> dict[str, int]:
    """Draft tokens by request id (requests granted none are left out)."""
    if max_draft_tokens <= 0 or not candidates or step.tokens <= 0:
        return {}
    prior = DEFAULT_ACCEPTANCE if engine_acceptance is None else engine_acceptance
    cost = max(step.draft_token_s, 1e-9)
    floor = (1.0 - throughput_cost) * step.tokens / max(step.step_s, 1e-9)
    rates = [
        request_acceptance(c.request.num_draft_tokens, c.request.num_accepted_draft_tokens, prior)
        for c in candidates
    ]
    # Max-heap of the next increment of each request: (-weighted gain, index, gain).
    heap = [(-c.weight * a, i, a) for i, (c, a) in enumerate(zip(candidates, rates, strict=True))]
    heapq.heapify(heap)
    depth = [0] * len(candidates)
    step_s, tokens = step.step_s, step.tokens
    while heap:
        _, i, gain = heapq.heappop(heap)
        pays = gain / cost >= PAYS_MARGIN * tokens / step_s
        affordable = (
            candidates[i].buys_speed and (tokens + gain) / (step_s + cost) >= floor
        )
        if not (pays or affordable):
            continue  # later increments of this request are worth less still
        depth[i] += 1
        step_s += cost
        tokens += gain
        if depth[i] < max_draft_tokens:
            nxt = gain * rates[i]
            heapq.heappush(heap, (-candidates[i].weight * nxt, i, nxt))
    return {c.request.request_id: k for c, k in zip(candidates, depth, strict=True) if k}


class UniformSpeculation:
    """Draft tokens for fcfs and priority: every decoding request under the same rule, each
    increment only where it pays for itself. Learns step costs only while speculation is on."""

    def __init__(self, prior: StepCoefficients | None = None):
        # Refit every 16 steps: speculation's depth needs the costs' level, not each step's.
        self.model = StepTimeModel(prior, refit_every=16) if prior else StepTimeModel(
            refit_every=16
        )

    def set_prior(self, prior: StepCoefficients) -> None:
        self.model.set_prior(prior)

    def learn(self, step: StepStats) -> None:
        self.model.observe_step(step)

    def plan(self, view: SchedulerView) -> dict[str, int]:
        if view.max_draft_tokens <= 0:
            return {}
        if view.last_step is not None:
            self.learn(view.last_step)
        decoding = [r for r in view.running if not r.is_prefill]
        if not decoding:
            return {}
        prompt = sum(r.num_uncomputed_tokens for r in view.running if r.is_prefill)
        prompt = min(prompt, view.max_num_batched_tokens)
        kv = sum(r.num_tokens for r in decoding)
        estimate = StepEstimate(
            step_s=self.model.predict(len(decoding), prompt, kv),
            tokens=len(decoding),
            draft_token_s=self.model.coefficients.draft_token_s,
        )
        return plan_draft_tokens(
            [DraftCandidate(r) for r in decoding],
            estimate,
            view.max_draft_tokens,
            view.draft_acceptance,
        )
