"""Scheduler: iteration-level continuous batching with chunked prefill and preemption.

Each step mixes decodes and prefill chunks under one token budget (vLLM v1 style): running
sequences are served first in the policy's order, then waiting ones are admitted while budget,
sequence slots and KV blocks last. When blocks run out, the policy's victim is preempted by
recompute: its blocks are freed and it re-enters the front of the waiting queue, keeping the
tokens generated so far.

A sequence whose tokens cannot fit even in the whole KV cache is finished with
FinishReason.LENGTH (reported in `SchedulerOutput.finished`) instead of being retried forever.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from tokenfactory.engine.block_manager import BlockManager
from tokenfactory.engine.config import EngineConfig
from tokenfactory.engine.policy import SchedulingPolicy
from tokenfactory.engine.sequence import FinishReason, Sequence, SequenceStatus


@dataclass
class ScheduledChunk:
    seq: Sequence
    start: int  # == seq.num_computed_tokens at schedule time
    num_tokens: int  # tokens to run this step
    # Length of the sequence when scheduled: the engine appends the sampled token before
    # on_step_done, which must not change what `samples` says.
    seq_len: int = field(default=-1, repr=False)

    def __post_init__(self) -> None:
        if self.seq_len < 0:
            self.seq_len = self.seq.num_tokens

    @property
    def samples(self) -> bool:
        """This chunk reaches the end of the sequence, so its logits yield a new token."""
        return self.start + self.num_tokens == self.seq_len

    @property
    def is_decode(self) -> bool:
        return self.num_tokens == 1


@dataclass
class SchedulerOutput:
    chunks: list[ScheduledChunk]  # decodes (num_tokens == 1) first, then prefill chunks
    preempted: list[Sequence]
    num_prefill_tokens: int
    num_decode_tokens: int
    # Finished by the scheduler (too long for the whole cache); the engine reports them.
    finished: list[Sequence] = field(default_factory=list)

    @property
    def is_empty(self) -> bool:
        """Nothing for the model to run (`finished` may still need reporting)."""
        return not self.chunks

    @property
    def num_scheduled_tokens(self) -> int:
        return self.num_prefill_tokens + self.num_decode_tokens


class Scheduler:
    def __init__(self, config: EngineConfig, block_manager: BlockManager, policy: SchedulingPolicy):
        self.config = config
        self.block_manager = block_manager
        self.policy = policy
        policy.set_limits(max_num_seqs=config.max_num_seqs)
        self._waiting: deque[Sequence] = deque()
        self._running: list[Sequence] = []
        self._seqs: dict[str, Sequence] = {}  # unfinished, by request id
        # Blocks kept free when admitting, so running sequences aren't preempted at once.
        self._watermark = int(0.01 * block_manager.num_blocks)

    # ---- queue views ----------------------------------------------------------------------

    @property
    def waiting(self) -> tuple[Sequence, ...]:
        return tuple(self._waiting)

    @property
    def running(self) -> tuple[Sequence, ...]:
        return tuple(self._running)

    @property
    def num_waiting(self) -> int:
        return len(self._waiting)

    @property
    def num_running(self) -> int:
        return len(self._running)

    def has_unfinished(self) -> bool:
        return bool(self._waiting or self._running)

    # ---- lifecycle ------------------------------------------------------------------------

    def add(self, seq: Sequence) -> None:
        if seq.request_id in self._seqs:
            raise ValueError(f"request id {seq.request_id!r} is already scheduled")
        if seq.is_finished or seq.block_table:
            raise ValueError(f"request {seq.request_id!r} is not a fresh sequence")
        seq.status = SequenceStatus.WAITING
        self._seqs[seq.request_id] = seq
        self._waiting.append(seq)

    def abort(self, request_id: str) -> Sequence | None:
        """Drop an unfinished request and free its blocks; unknown ids return None."""
        seq = self._seqs.get(request_id)
        if seq is None:
            return None
        self.finish(seq, FinishReason.ABORT)
        return seq

    def finish(self, seq: Sequence, reason: FinishReason) -> None:
        """Stop a sequence (the engine calls this on EOS, stop strings, max_tokens...)."""
        if seq.is_finished:
            return
        if seq.status is SequenceStatus.RUNNING:
            self._running.remove(seq)
        else:
            self._waiting.remove(seq)
        self._seqs.pop(seq.request_id, None)
        self.block_manager.free(seq)
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = reason
        if seq.finished_time is None:
            seq.finished_time = time.monotonic()

    # ---- the step -------------------------------------------------------------------------

    def schedule(self, now: float | None = None) -> SchedulerOutput:
        now = time.monotonic() if now is None else now
        max_seqs = self.config.max_num_seqs
        budget = self.config.max_num_batched_tokens
        chunks: list[ScheduledChunk] = []
        preempted: list[Sequence] = []
        finished: list[Sequence] = []
        scheduled: set[Sequence] = set()

        self.policy.see_waiting(list(self._waiting), now)
        order = self.policy.order_running(list(self._running), now)
        if self.config.enable_chunked_prefill:
            cap = self.policy.step_token_budget(now)
            if cap is not None:
                budget = min(budget, max(1, cap))
        for seq in order:
            if budget <= 0 or len(chunks) >= max_seqs:
                break
            if seq.status is not SequenceStatus.RUNNING:
                continue  # preempted as a victim earlier in this loop
            if self._too_long(seq):
                self.finish(seq, FinishReason.LENGTH)
                finished.append(seq)
                continue
            n = self._chunk_len(seq, budget, step_empty=not chunks)
            if n == 0:
                continue
            while not self.block_manager.append_slots(seq, n):
                others = [s for s in self._running if s is not seq and s not in scheduled]
                victim = self.policy.preemption_victim(others) if others else seq
                self._preempt(victim)
                preempted.append(victim)
                if victim is seq:
                    break
            else:
                chunks.append(ScheduledChunk(seq, seq.num_computed_tokens, n))
                scheduled.add(seq)
                budget -= n

        # Admitting right after a preemption would only thrash: the blocks just freed are
        # needed by the sequences that are already running.
        if not preempted:
            budget = self._admit(now, budget, chunks, finished)
        if self._waiting:
            queued = list(self._waiting)
            for seq, retry in self.policy.shed_queued(queued, list(self._running), now):
                if seq.status is SequenceStatus.WAITING and seq.first_scheduled_time is None:
                    seq.metadata["retry_after_s"] = retry
                    self.finish(seq, FinishReason.SHED)
                    finished.append(seq)

        chunks.sort(key=lambda c: not c.is_decode)  # stable: decodes first
        decode = sum(c.num_tokens for c in chunks if c.is_decode)
        prefill = sum(c.num_tokens for c in chunks if not c.is_decode)
        return SchedulerOutput(chunks, preempted, prefill, decode, finished)

    def on_step_done(self, output: SchedulerOutput) -> None:
        """Advance progress after the runner ran `output` and sampled tokens were appended."""
        for chunk in output.chunks:
            seq = chunk.seq
            # Finished or aborted in between (or otherwise stale): leave it alone.
            if seq.status is not SequenceStatus.RUNNING or seq.num_computed_tokens != chunk.start:
                continue
            seq.num_computed_tokens += chunk.num_tokens
            self.block_manager.commit(seq, seq.num_computed_tokens)

    # ---- internals ------------------------------------------------------------------------

    def _admit(
        self,
        now: float,
        budget: int,
        chunks: list[ScheduledChunk],
        finished: list[Sequence],
    ) -> int:
        bm = self.block_manager
        max_seqs = self.config.max_num_seqs
        for seq in self.policy.order_waiting(list(self._waiting), now):
            if budget <= 0 or len(self._running) >= max_seqs or len(chunks) >= max_seqs:
                break
            if seq.status is not SequenceStatus.WAITING:
                continue
            if self._too_long(seq):
                self.finish(seq, FinishReason.LENGTH)
                finished.append(seq)
                continue
            if not self.policy.may_admit(seq, list(self._running), now):
                if seq.num_preemptions == 0 and seq.first_scheduled_time is None:
                    retry = self.policy.shed(seq, list(self._running), now)
                    if retry is not None:  # refused on arrival: no capacity for this tier
                        seq.metadata["retry_after_s"] = retry
                        self.finish(seq, FinishReason.SHED)
                        finished.append(seq)
                continue
            fresh = not seq.block_table
            cached = bm.allocate_prefix(seq) if fresh else 0
            n = self._chunk_len(seq, budget, step_empty=not chunks)
            # No watermark while nothing runs: there is no one to protect, and a sequence
            # that needs the whole cache must still be admitted.
            watermark = self._watermark if self._running else 0
            if n == 0 or bm.blocks_needed(seq, n) + watermark > bm.num_free_blocks:
                if fresh:
                    bm.free(seq)
                    seq.num_computed_tokens = 0
                break  # head-of-line: don't let later arrivals overtake it
            ok = bm.append_slots(seq, n)
            assert ok, "blocks_needed and append_slots disagree"
            if seq.num_preemptions == 0:
                seq.num_cached_tokens = cached
            if seq.first_scheduled_time is None:
                seq.first_scheduled_time = now
            self._waiting.remove(seq)
            seq.status = SequenceStatus.RUNNING
            self._running.append(seq)
            chunks.append(ScheduledChunk(seq, seq.num_computed_tokens, n))
            budget -= n
        return budget

    def _chunk_len(self, seq: Sequence, budget: int, step_empty: bool) -> int:
        """Tokens to run for `seq` this step; 0 when it must wait."""
        n = seq.num_uncomputed_tokens
        if n <= budget:
            return n
        if self.config.enable_chunked_prefill:
            return budget
        # Without chunking a prompt runs whole. One larger than the whole step budget would
        # never fit, so it may run alone in a step of its own.
        if step_empty and n > self.config.max_num_batched_tokens:
            return n
        return 0

    def _too_long(self, seq: Sequence) -> bool:
        """True when the sequence's K/V can't fit even in the entire cache."""
        bm = self.block_manager
        return -(-seq.num_tokens // bm.block_size) > bm.num_blocks

    def _preempt(self, seq: Sequence) -> None:
        self._running.remove(seq)
        self.block_manager.free(seq)
        seq.num_computed_tokens = 0
        seq.status = SequenceStatus.WAITING
        seq.num_preemptions += 1
        self._waiting.appendleft(seq)
