"""A simulated engine: the real scheduler and policy, stepping on a synthetic clock.

No model runs. Each step takes what a step-time model (`StepCoefficients`) predicts for the
work the scheduler planned, optionally times random noise, and the clock moves on by that
much; the policy is told about every step exactly as under the real engine, so a policy that
learns its step time learns it here too. Used to try scheduling policies in seconds instead
of benchmark hours, by the policy tests and by `tokenfactory bench policies --simulate`.

It drives the engine's own `Scheduler` and `BlockManager` (plain Python, no torch): the one
place this room uses the engine's mechanics, so that what is simulated is what runs.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from tokenfactory.engine.block_manager import BlockManager
from tokenfactory.engine.config import EngineConfig
from tokenfactory.engine.scheduler import Scheduler, SchedulerOutput
from tokenfactory.engine.sequence import FinishReason, Sequence
from tokenfactory.scheduling.policy import SchedulingPolicy
from tokenfactory.scheduling.step_model import StepCoefficients
from tokenfactory.scheduling.step_stats import StepStats
from tokenfactory.tiers import decode_speed

_IDLE_TICK_S = 0.001  # how far the clock moves when there is nothing to run


@dataclass
class SimulatedEngine:
    policy: SchedulingPolicy
    cost: StepCoefficients
    num_blocks: int = 4096
    block_size: int = 16
    max_num_seqs: int = 64
    noise: float = 0.0  # each step's time is multiplied by a uniform factor in 1 +- noise
    # Pauses that are not work (a kernel compiled on first use, a garbage collection): this
    # share of steps takes stall_s longer.
    stall_share: float = 0.0
    stall_s: float = 0.0
    seed: int = 0
    now: float = 0.0
    seqs: dict[str, Sequence] = field(default_factory=dict)
    steps: list[SchedulerOutput] = field(default_factory=list)
    # Request id -> the output token after which its simulated model stops by itself.
    stop_after: dict[str, int] = field(default_factory=dict)
    # Speculative decoding: the most draft tokens a request may verify per step (0: off),
    # and the chance each draft token is accepted, by request id (absent: `acceptance`).
    max_draft_tokens: int = 0
    acceptance: float = 0.5
    request_acceptance: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.config = EngineConfig(block_size=self.block_size, max_num_seqs=self.max_num_seqs)
        self.block_manager = BlockManager(
            self.num_blocks, self.block_size, enable_prefix_caching=False
        )
        self.scheduler = Scheduler(
            self.config, self.block_manager, self.policy, self.max_draft_tokens
        )
        self._rng = random.Random(self.seed)

    def add(self, seq: Sequence, stop_after: int | None = None) -> Sequence:
        """Queue a fresh sequence arriving now (its `arrival_time` is set to the clock); its
        model stops by itself after `stop_after` output tokens, if given."""
        seq.arrival_time = self.now
        if stop_after is not None:
            self.stop_after[seq.request_id] = stop_after
        self.scheduler.add(seq)
        self.seqs[seq.request_id] = seq
        return seq

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished()

    def step(self) -> SchedulerOutput:
        plan = self.scheduler.schedule(self.now)
        self.steps.append(plan)
        for seq in [*plan.finished, *(s.seq for s in plan.shed)]:  # ended by the scheduler
            seq.finished_time = self.now
        if plan.is_empty:
            self.now += _IDLE_TICK_S
            return plan
        if plan.speculating:  # the simulated proposer always fills the slots granted
            plan.attach_drafts({c.seq.request_id: [7] * c.draft_slots for c in plan.speculating})
        kv = sum(c.start + c.num_tokens for c in plan.chunks)
        duration = self.cost.predict(
            plan.num_decode_tokens, plan.num_prefill_tokens, kv, plan.num_draft_tokens
        )
        if self.noise > 0:
            duration *= 1.0 + self._rng.uniform(-self.noise, self.noise)
        if self.stall_share > 0 and self._rng.random() < self.stall_share:
            duration += self.stall_s
        self.now += duration
        for c in plan.chunks:
            if not c.samples:
                continue
            seq = c.seq
            if c.draft:
                c.num_accepted = self._accepted(seq.request_id, len(c.draft))
                seq.num_draft_tokens += len(c.draft)
                seq.num_accepted_draft_tokens += c.num_accepted
            # The tokens' values do not matter here.
            seq.output_token_ids += [7] * (1 + c.num_accepted)
            if seq.first_token_time is None:
                seq.first_token_time = self.now
        self.scheduler.on_step_done(plan)
        for c in plan.chunks:
            seq = c.seq
            if not c.samples:
                continue
            # A request may carry where its model would stop on its own (end of sequence),
            # which the policy cannot know in advance, as under the engine.
            stop_after = self.stop_after.get(seq.request_id)
            if stop_after is not None and seq.num_output_tokens >= stop_after:
                seq.finished_time = self.now
                self.scheduler.finish(seq, FinishReason.STOP)
            elif seq.num_output_tokens >= (seq.params.max_tokens or 1):
                seq.finished_time = self.now
                self.scheduler.finish(seq, FinishReason.LENGTH)
        self.scheduler.record_step(
            StepStats(
                started_at=self.now - duration,
                duration_s=duration,
                num_seqs=len(plan.chunks),
                num_decode_tokens=plan.num_decode_tokens,
                num_prefill_tokens=plan.num_prefill_tokens,
                num_kv_tokens_read=kv,
                num_sampled=sum(c.samples for c in plan.chunks),
                num_preempted=len(plan.preempted),
                num_waiting=self.scheduler.num_waiting,
                num_running=self.scheduler.num_running,
                kv_usage=self.block_manager.usage,
                num_draft_tokens=plan.num_draft_tokens,
                num_accepted_tokens=sum(c.num_accepted for c in plan.chunks),
            )
        )
        return plan

    def _accepted(self, request_id: str, k: int) -> int:
        """Leading draft tokens accepted, each with the request's acceptance chance."""
        rate = self.request_acceptance.get(request_id, self.acceptance)
        n = 0
        while n < k and self._rng.random() < rate:
            n += 1
        return n

    def run_until(self, t: float) -> None:
        """Step until the clock reaches `t` (idle time passes in small ticks)."""
        while self.now < t:
            if self.scheduler.has_unfinished():
                self.step()
            else:
                self.now = t

    def drain(self, max_steps: int = 1_000_000) -> None:
        for _ in range(max_steps):
            if not self.scheduler.has_unfinished():
                return
            self.step()
        raise RuntimeError("simulation made no progress")

    def ttft(self, request_id: str) -> float | None:
        seq = self.seqs[request_id]
        if seq.first_token_time is None:
            return None
        return seq.first_token_time - seq.arrival_time

    def speed(self, request_id: str) -> float | None:
        seq = self.seqs[request_id]
        end = seq.finished_time if seq.finished_time is not None else self.now
        return decode_speed(seq.num_output_tokens, seq.first_token_time, end)
