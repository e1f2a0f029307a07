"""Scheduler: iteration-level continuous batching with chunked prefill and preemption.

Each step the policy plans (`scheduling.view`: one immutable view in, one `StepPlan` out) and
the scheduler applies the plan's mechanics under one token budget (vLLM v1 style): running
sequences step in the plan's order, then waiting ones are admitted in the plan's order while
budget, sequence slots and KV blocks last. When blocks run out, the first request in the
plan's preemption order is preempted by recompute: its blocks are freed and it re-enters the
front of the waiting queue, keeping the tokens generated so far. Requests the plan refuses end
as shed, with their Retry-After; downgrades put the plan's slower terms on the request.

A sequence whose tokens cannot fit even in the whole KV cache is finished with
FinishReason.LENGTH (reported in `SchedulerOutput.finished`) instead of being retried forever:
a new arrival before the policy sees it, a running one when its turn to step comes.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

from tokenfactory.engine.block_manager import BlockManager
from tokenfactory.engine.config import EngineConfig
from tokenfactory.engine.sequence import FinishReason, Sequence, SequenceStatus
from tokenfactory.scheduling.acceptance import AcceptanceRate
from tokenfactory.scheduling.policy import SchedulingPolicy
from tokenfactory.scheduling.step_stats import StepStats
from tokenfactory.scheduling.view import RequestView, SchedulerView, StepPlan, chunk_tokens


@dataclass
class ScheduledChunk:
    seq: Sequence
    start: int  # == seq.num_computed_tokens at schedule time
    num_tokens: int  # tokens to run this step (a decode's draft tokens included)
    # Length of the sequence when scheduled: the engine appends the sampled token before
    # on_step_done, which must not change what `samples` says.
    seq_len: int = field(default=-1, repr=False)
    # Speculative decoding: KV slots reserved for draft tokens, the draft the proposer filled
    # them with (`SchedulerOutput.attach_drafts`; run after the decode's own token), and how
    # many of it the sampler accepted (set by the engine before on_step_done).
    draft_slots: int = 0
    draft: list[int] = field(default_factory=list)
    num_accepted: int = 0

    def __post_init__(self) -> None:
        if self.seq_len < 0:
            self.seq_len = self.seq.num_tokens

    @property
    def samples(self) -> bool:
        """This chunk reaches the end of the sequence, so its logits yield a new token."""
        return self.start + self.num_tokens - len(self.draft) == self.seq_len

    @property
    def num_sample_rows(self) -> int:
        """Rows of logits the chunk yields: its last token's, and one per draft token."""
        return 1 + len(self.draft) if self.samples else 0

    @property
    def is_decode(self) -> bool:
        return self.num_tokens == 1


@dataclass(frozen=True)
class ShedRequest:
    """A request the policy refused: ended at once, to be told to retry after this long."""

    seq: Sequence
    retry_after_s: float


@dataclass
class SchedulerOutput:
    chunks: list[ScheduledChunk]  # decodes (num_tokens == 1) first, then prefill chunks
    preempted: list[Sequence]
    num_prefill_tokens: int
    num_decode_tokens: int
    # Finished by the scheduler (too long for the whole cache); the engine reports them.
    finished: list[Sequence] = field(default_factory=list)
    shed: list[ShedRequest] = field(default_factory=list)  # refused by the policy's plan

    @property
    def is_empty(self) -> bool:
        """Nothing for the model to run (`finished` may still need reporting)."""
        return not self.chunks

    @property
    def num_scheduled_tokens(self) -> int:
        return self.num_prefill_tokens + self.num_decode_tokens + self.num_draft_tokens

    @property
    def num_draft_tokens(self) -> int:
        return sum(len(c.draft) for c in self.chunks)

    @property
    def speculating(self) -> list[ScheduledChunk]:
        """Decodes with KV slots reserved for draft tokens, waiting for a proposer's draft."""
        return [c for c in self.chunks if c.draft_slots]

    def attach_drafts(self, drafts: Mapping[str, list[int]]) -> None:
        """Put each speculating decode's draft (by request id; at most its reserved slots,
        absent: none) after its token, then order the step as the runner expects: decodes
        and drafts first."""
        for chunk in self.speculating:
            chunk.draft = list(drafts.get(chunk.seq.request_id, ()))[: chunk.draft_slots]
            chunk.num_tokens = 1 + len(chunk.draft)
        # Verified drafts run as decodes, one row per position (`step_inputs`): they go with
        # the decodes, ahead of the prompt chunks.
        self.chunks.sort(key=lambda c: not (c.is_decode or c.draft))


class Scheduler:
    def __init__(
        self,
        config: EngineConfig,
        block_manager: BlockManager,
        policy: SchedulingPolicy,
        max_draft_tokens: int = 0,
        max_model_len: int | None = None,
    ):
        self.config = config
        self.block_manager = block_manager
        self.policy = policy
        # Speculative decoding: at most this many draft tokens per request and step (0: off);
        # a draft never reaches past the context window.
        self.max_draft_tokens = max_draft_tokens
        self.max_model_len = max_model_len
        self.acceptance = AcceptanceRate()
        self._step_index = 0  # plans made so far
        self._last_step: StepStats | None = None  # the step run since the last plan
        self._unseen: list[Sequence] = []  # added since the last plan
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
        self._unseen.append(seq)

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

    def record_step(self, stats: StepStats) -> None:
        """The step just run, for the policy to learn from at the next plan."""
        self._last_step = stats

    def schedule(self, now: float | None = None) -> SchedulerOutput:
        now = time.monotonic() if now is None else now
        finished = self._finish_too_long()
        plan = self._plan(now)
        for d in plan.downgrade:
            seq = self._own(d.request)
            if seq is not None and seq.status is SequenceStatus.WAITING:
                seq.terms = d.terms
        budget = self.config.max_num_batched_tokens
        if self.config.enable_chunked_prefill and plan.token_budget is not None:
            budget = min(budget, max(1, plan.token_budget))
        chunks: list[ScheduledChunk] = []
        preempted: list[Sequence] = []
        budget = self._run(plan, budget, chunks, preempted, finished)
        # Admitting right after a preemption would only thrash: the blocks just freed are
        # needed by the sequences that are already running.
        if not preempted:
            self._admit(plan, now, budget, chunks)
        shed = self._shed(plan)
        for request in plan.judged:
            judged = self._own(request)
            if judged is not None:
                judged.judged_on_arrival = True
        for seq in self._unseen:
            seq.seen_by_plan = True
        self._unseen.clear()

        chunks.sort(key=lambda c: not c.is_decode)  # stable: decodes first
        decode = sum(c.num_tokens for c in chunks if c.is_decode)
        prefill = sum(c.num_tokens for c in chunks if not c.is_decode)
        return SchedulerOutput(chunks, preempted, prefill, decode, finished, shed)

    def on_step_done(self, output: SchedulerOutput) -> None:
        """Advance progress after the runner ran `output` and sampled tokens were appended."""
        for chunk in output.chunks:
            seq = chunk.seq
            # Finished or aborted in between (or otherwise stale): leave it alone.
            if seq.status is not SequenceStatus.RUNNING or seq.num_computed_tokens != chunk.start:
                continue
            # A draft's rejected tokens are not computed: their K/V are overwritten later.
            seq.num_computed_tokens += chunk.num_tokens - len(chunk.draft) + chunk.num_accepted
            if chunk.draft_slots:
                self.block_manager.trim(seq)
            self.block_manager.commit(seq, seq.num_computed_tokens)
        if self.max_draft_tokens:
            # Every step, drafts or not: a rate that stopped all drafting decays back toward
            # its prior, so drafting is tried again (the workload may have changed).
            drafted = [c for c in output.chunks if c.draft]
            self.acceptance.observe(
                sum(len(c.draft) for c in drafted), sum(c.num_accepted for c in drafted)
            )

    def on_step_launched(self, output: SchedulerOutput) -> None:
        """Advance progress of a step whose sampled tokens are still on the device
        (asynchronous scheduling; its sampling chunks each yield one token, no drafts): the
        next plan then sees each of them one token further. `on_step_resolved` finishes."""
        for chunk in output.chunks:
            seq = chunk.seq
            if seq.status is SequenceStatus.RUNNING and seq.num_computed_tokens == chunk.start:
                seq.num_computed_tokens += chunk.num_tokens

    def on_step_resolved(self, output: SchedulerOutput) -> None:
        """The tokens of a step `on_step_launched` advanced are on the host now: its full
        blocks enter the prefix cache, as `on_step_done` would have entered them."""
        for chunk in output.chunks:
            if chunk.seq.status is SequenceStatus.RUNNING:
                self.block_manager.commit(chunk.seq, chunk.start + chunk.num_tokens)

    # ---- internals ------------------------------------------------------------------------

    def _plan(self, now: float) -> StepPlan:
        self._step_index += 1
        bm = self.block_manager
        view = SchedulerView(
            now=now,
            step_index=self._step_index,
            running=tuple(self._running),
            waiting=tuple(self._waiting),
            max_num_seqs=self.config.max_num_seqs,
            max_num_batched_tokens=self.config.max_num_batched_tokens,
            chunked_prefill=self.config.enable_chunked_prefill,
            free_blocks=bm.num_free_blocks,
            block_size=bm.block_size,
            last_step=self._last_step,
            max_draft_tokens=self.max_draft_tokens,
            draft_acceptance=self.acceptance.rate,
        )
        self._last_step = None
        return self.policy.plan(view)

    def _finish_too_long(self) -> list[Sequence]:
        # New arrivals only: a waiting request does not grow (a preempted one was checked
        # while it ran), and running ones are checked as they step (`_run`).
        too_long = [
            s for s in self._unseen if s.status is SequenceStatus.WAITING and self._too_long(s)
        ]
        for seq in too_long:
            self.finish(seq, FinishReason.LENGTH)
        return too_long

    def _chunk_len(self, seq: Sequence, budget: int, step_empty: bool) -> int:
        """Tokens to run for `seq` this step; 0 when it must wait."""
        cfg = self.config
        return chunk_tokens(
            seq.num_uncomputed_tokens,
            budget,
            cfg.enable_chunked_prefill,
            step_empty,
            cfg.max_num_batched_tokens,
        )

    def _run(
        self,
        plan: StepPlan,
        budget: int,
        chunks: list[ScheduledChunk],
        preempted: list[Sequence],
        finished: list[Sequence],
    ) -> int:
        """Step the running sequences in the plan's order; returns the budget left."""
        scheduled: set[Sequence] = set()
        caps = plan.query_caps
        max_seqs = self.config.max_num_seqs
        for request in plan.run:
            if budget <= 0 or len(chunks) >= max_seqs:
                break
            # Inline `_own`: this loop runs over every running request, every step.
            seq = request if type(request) is Sequence else self._own(request)
            if seq is None or seq.status is not SequenceStatus.RUNNING:
                continue  # preempted as a victim earlier in this loop
            if self._too_long(seq):
                self.finish(seq, FinishReason.LENGTH)
                finished.append(seq)
                continue
            if seq.has_last_token(self.max_model_len):
                # Its last token is still on the device (a step in flight): the engine ends
                # it when that token arrives. (Never the case when steps run one at a time.)
                continue
            n = self._chunk_len(seq, budget, step_empty=not chunks)
            if caps:
                n = min(n, caps.get(seq.request_id, n))
            if n == 0:
                continue
            drafts = self._draft_slots(plan, seq) if seq.num_uncomputed_tokens == 1 else 0
            while not self.block_manager.append_slots(seq, n + drafts):
                if drafts:  # short of blocks: verify nothing rather than preempt anyone
                    drafts = 0
                    continue
                victim = self._victim(plan, seq, scheduled)
                self._preempt(victim)
                preempted.append(victim)
                if victim is seq:
                    break
            else:
                chunks.append(ScheduledChunk(seq, seq.num_computed_tokens, n, draft_slots=drafts))
                seq.last_scheduled_step = self._step_index
                scheduled.add(seq)
                # Drafts come on top of the budget: they never change how prompts are
                # chunked, so a prompt's K/V is computed in the same chunks with or without
                # speculation (and greedy output stays the same).
                budget -= n
        return budget

    def _draft_slots(self, plan: StepPlan, seq: Sequence) -> int:
        """Draft tokens a decoding `seq` may verify this step: what the plan grants, within
        the tokens it may still generate and the context window."""
        k = plan.draft_tokens.get(seq.request_id, 0) if plan.draft_tokens else 0
        if k <= 0 or self.max_draft_tokens <= 0:
            return 0
        # A step emits at most drafts + 1 tokens: never more than the request may still get.
        left = k
        if seq.max_tokens is not None:
            left = min(left, seq.max_tokens - seq.num_output_tokens - 1)
        if self.max_model_len is not None:
            left = min(left, self.max_model_len - seq.num_tokens - 1)
        return max(0, min(k, self.max_draft_tokens, left))

    def _own(self, request: RequestView) -> Sequence | None:
        """The scheduler's sequence a plan names (policies return the views they were given,
        which are the sequences themselves)."""
        if isinstance(request, Sequence):
            return request  # callers check its status
        return self._seqs.get(request.request_id)

    def _victim(self, plan: StepPlan, seq: Sequence, scheduled: set[Sequence]) -> Sequence:
        """The first running request in the plan's preemption order that has not stepped
        yet (any the plan left out come after, newest first); `seq` itself when none."""
        order = (self._own(r) for r in plan.preempt_order)
        for other in (*order, *reversed(self._running)):
            if (
                other is not None
                and other is not seq
                and other.status is SequenceStatus.RUNNING
                and other not in scheduled
            ):
                return other
        return seq

    def _admit(
        self, plan: StepPlan, now: float, budget: int, chunks: list[ScheduledChunk]
    ) -> None:
        bm = self.block_manager
        max_seqs = self.config.max_num_seqs
        for request in plan.admit:
            if budget <= 0 or len(self._running) >= max_seqs or len(chunks) >= max_seqs:
                break
            seq = self._own(request)
            if seq is None or seq.status is not SequenceStatus.WAITING:
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
            seq.last_scheduled_step = self._step_index
            budget -= n

    def _shed(self, plan: StepPlan) -> list[ShedRequest]:
        """End the requests the plan refused, while they still wait and never ran."""
        shed = []
        for refusal in plan.refuse:
            seq = self._own(refusal.request)
            if (
                seq is not None
                and seq.status is SequenceStatus.WAITING
                and seq.first_scheduled_time is None
            ):
                self.finish(seq, FinishReason.SHED)
                shed.append(ShedRequest(seq, refusal.retry_after_s))
        return shed

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
