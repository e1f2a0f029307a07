"""Scheduler: fcfs order, token budget, chunked prefill, preemption, abort, policies.

A fake runner stands in for the model: the "K/V" it writes at a position is a hash of the
K/V at the previous position (read back through the block table) and the token there, and a
sampled token is derived from the last K/V. So a sequence's outputs depend on every slot it
reads; any scheduling or caching bug that serves wrong K/V changes the outputs.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenfactory.engine.block_manager import BlockManager
from tokenfactory.engine.config import EngineConfig
from tokenfactory.engine.sampling_params import SamplingParams
from tokenfactory.engine.scheduler import Scheduler, SchedulerOutput
from tokenfactory.engine.sequence import FinishReason, Sequence, SequenceStatus
from tokenfactory.scheduling.fcfs import FcfsPolicy
from tokenfactory.scheduling.policy import SchedulingPolicy, make_policy
from tokenfactory.scheduling.step_stats import StepStats
from tokenfactory.scheduling.view import Downgrade, Refusal, SchedulerView, StepPlan
from tokenfactory.tiers import Promise, ServiceTerms

from ..scheduling.views import view_of

VOCAB = 50


def kv_value(prev: int, token: int) -> int:
    return hash((prev, token)) & 0xFFFFFFFF


def reference_outputs(prompt: list[int], max_tokens: int) -> list[int]:
    """What the fake runner must produce when every K/V slot is right."""
    tokens, out, kv = list(prompt), [], 0
    for tok in tokens:
        kv = kv_value(kv, tok)
    while len(out) < max_tokens:
        nxt = kv % VOCAB
        out.append(nxt)
        kv = kv_value(kv, nxt)
    return out


class FakeEngine:
    def __init__(self, config: EngineConfig, num_blocks: int, policy: str = "fcfs"):
        self.config = config
        self.bm = BlockManager(num_blocks, config.block_size, config.enable_prefix_caching)
        self.sched = Scheduler(config, self.bm, make_policy(policy))
        self.kv: dict[tuple[int, int], int] = {}
        self.steps: list[SchedulerOutput] = []
        self.finished: list[Sequence] = []

    def add(self, rid: str, prompt: list[int], max_tokens: int, arrival: float = 0.0) -> Sequence:
        seq = Sequence(rid, list(prompt), SamplingParams(max_tokens=max_tokens))
        seq.arrival_time = arrival
        self.sched.add(seq)
        return seq

    def _slot(self, seq: Sequence, pos: int) -> tuple[int, int]:
        bs = self.config.block_size
        return seq.block_table[pos // bs], pos % bs

    def step(self, now: float | None = None) -> SchedulerOutput:
        out = self.sched.schedule(now=float(len(self.steps)) if now is None else now)
        self.steps.append(out)
        self.finished += out.finished
        sizes = [c.num_tokens for c in out.chunks]
        assert len(out.chunks) <= self.config.max_num_seqs
        if sum(sizes) > self.config.max_num_batched_tokens:
            # Only an oversized prompt without chunking may exceed the budget, and alone.
            assert not self.config.enable_chunked_prefill and len(sizes) == 1
        assert sizes == sorted(sizes, key=lambda n: n != 1), "decodes must come first"
        assert out.num_decode_tokens + out.num_prefill_tokens == sum(sizes)
        for chunk in out.chunks:
            seq = chunk.seq
            assert chunk.start == seq.num_computed_tokens and chunk.num_tokens >= 1
            assert seq.status is SequenceStatus.RUNNING
            for pos in range(chunk.start, chunk.start + chunk.num_tokens):
                block, _ = slot = self._slot(seq, pos)
                assert self.bm.ref_count(block) == 1, "writing into a shared block"
                prev = self.kv[self._slot(seq, pos - 1)] if pos else 0
                self.kv[slot] = kv_value(prev, seq.token_at(pos))
            if chunk.samples:
                last = self.kv[self._slot(seq, seq.num_tokens - 1)]
                seq.output_token_ids.append(last % VOCAB)
        # Like the engine: stop finished sequences before telling the scheduler.
        for chunk in out.chunks:
            seq = chunk.seq
            if chunk.samples and seq.num_output_tokens >= seq.params.max_tokens:
                self.sched.finish(seq, FinishReason.LENGTH)
                self.finished.append(seq)
        self.sched.on_step_done(out)
        self.check()
        return out

    def check(self) -> None:
        for seq in self.sched.waiting:
            assert seq.block_table == [] and seq.status is SequenceStatus.WAITING
        self.bm.check_invariants(self.sched.running)

    def run(self, max_steps: int = 5000) -> None:
        while self.sched.has_unfinished():
            self.step()
            assert len(self.steps) < max_steps, "no progress"


def config(**kw) -> EngineConfig:
    kw.setdefault("block_size", 4)
    return EngineConfig(**kw)


def test_fcfs_policy_orders_by_arrival_and_preempts_newest():
    policy = make_policy("fcfs")
    assert isinstance(policy, FcfsPolicy) and isinstance(policy, SchedulingPolicy)
    seqs = [
        Sequence(f"r{i}", [1], SamplingParams(), arrival_time=t) for i, t in enumerate([3, 1, 2])
    ]
    plan = policy.plan(view_of(running=seqs, waiting=seqs))
    assert [s.request_id for s in plan.admit] == ["r1", "r2", "r0"]
    assert [r.request_id for r in plan.run] == ["r1", "r2", "r0"]
    assert [s.request_id for s in plan.preempt_order] == ["r0", "r2", "r1"]
    assert plan.token_budget is None and not plan.refuse and not plan.downgrade


def test_unknown_policy_lists_known_ones():
    with pytest.raises(ValueError, match="unknown scheduling policy 'nope'.*fcfs"):
        make_policy("nope")


def test_fcfs_admission_order_and_seq_limit():
    eng = FakeEngine(config(max_num_seqs=2), num_blocks=64)
    eng.add("late", [1, 2, 3], 3, arrival=2.0)
    eng.add("early", [4, 5, 6], 3, arrival=0.0)
    eng.add("mid", [7, 8, 9], 3, arrival=1.0)
    out = eng.step()
    assert [c.seq.request_id for c in out.chunks] == ["early", "mid"]
    assert eng.sched.num_running == 2 and eng.sched.num_waiting == 1
    assert all(c.seq.first_scheduled_time == 0.0 for c in out.chunks)
    eng.run()
    assert {s.request_id for s in eng.finished} == {"late", "early", "mid"}


class _ShedsQueuedOdd(FcfsPolicy):
    """fcfs that refuses every waiting request with an odd number."""

    def plan(self, view: SchedulerView) -> StepPlan:
        plan = super().plan(view)
        odd = tuple(Refusal(r, 7.0) for r in view.waiting if int(r.request_id[1:]) % 2)
        return replace(plan, admit=tuple(r for r in plan.admit if r not in odd), refuse=odd)


def test_requests_the_budget_never_reached_can_be_shed_from_the_queue():
    cfg = config(max_num_batched_tokens=8, max_num_seqs=4)
    bm = BlockManager(64, cfg.block_size, cfg.enable_prefix_caching)
    sched = Scheduler(cfg, bm, _ShedsQueuedOdd())
    for i in range(4):
        seq = Sequence(f"r{i}", [1] * 8, SamplingParams(max_tokens=3))
        seq.arrival_time = float(i)
        sched.add(seq)
    out = sched.schedule(0.0)
    # r0 took the whole budget; r1 and r3 were never reached and are refused from the queue.
    assert [c.seq.request_id for c in out.chunks] == ["r0"]
    shed = sorted(s.seq.request_id for s in out.shed)
    assert shed == ["r1", "r3"] and not out.finished
    assert all(s.seq.finish_reason is FinishReason.SHED for s in out.shed)
    assert all(s.retry_after_s == 7.0 for s in out.shed)
    assert [s.request_id for s in sched.waiting] == ["r2"]
    assert bm.num_free_blocks == bm.num_blocks - len(sched.running[0].block_table)


def test_token_budget_respected():
    eng = FakeEngine(config(max_num_batched_tokens=16, max_num_seqs=4), num_blocks=256)
    for i in range(10):
        eng.add(f"r{i}", list(range(i, i + 3 + 4 * i)), 5, arrival=i)
    eng.run()
    assert all(o.num_scheduled_tokens <= 16 for o in eng.steps)
    assert max(o.num_scheduled_tokens for o in eng.steps) == 16
    for seq in eng.finished:
        assert seq.output_token_ids == reference_outputs(seq.prompt_token_ids, 5)


def test_chunked_prefill_runs_alongside_decodes():
    eng = FakeEngine(config(max_num_batched_tokens=16), num_blocks=64)
    short = eng.add("short", [1, 2, 3], 20, arrival=0.0)
    eng.step()  # short's prompt
    long = eng.add("long", list(range(40)), 2, arrival=1.0)
    splits = []
    while long.num_computed_tokens < 40:
        out = eng.step()
        assert [c.seq for c in out.chunks] == [short, long]
        assert out.chunks[0].num_tokens == 1 and out.num_decode_tokens == 1
        splits.append(out.chunks[1].num_tokens)
    assert splits == [15, 15, 10]
    assert long.num_output_tokens == 1  # sampled only by the last chunk
    eng.run()
    assert short.output_token_ids == reference_outputs([1, 2, 3], 20)
    assert long.output_token_ids == reference_outputs(list(range(40)), 2)


def test_without_chunking_prompts_run_whole():
    cfg = config(max_num_batched_tokens=16, enable_chunked_prefill=False)
    eng = FakeEngine(cfg, num_blocks=64)
    a = eng.add("a", list(range(10)), 3, arrival=0.0)
    b = eng.add("b", list(range(10, 20)), 3, arrival=1.0)
    out = eng.step()
    assert [c.seq for c in out.chunks] == [a]  # b doesn't fit the rest of the budget whole
    out = eng.step()
    assert [(c.seq, c.num_tokens) for c in out.chunks] == [(a, 1), (b, 10)]
    # A prompt larger than the whole budget still runs: alone, once the step is empty.
    big = eng.add("big", list(range(30)), 2, arrival=2.0)
    eng.run()
    big_steps = [o for o in eng.steps if any(c.seq is big and c.num_tokens > 1 for c in o.chunks)]
    assert len(big_steps) == 1 and len(big_steps[0].chunks) == 1
    assert big.output_token_ids == reference_outputs(list(range(30)), 2)


def _workload(eng: FakeEngine) -> dict[str, tuple[list[int], int]]:
    shared = [7, 7, 7, 7, 8, 8, 8, 8]
    reqs = {
        f"r{i}": ((shared if i % 2 else []) + [i, i + 1, i + 2] * (1 + i % 4), 4 + (i * 3) % 9)
        for i in range(10)
    }
    for i, (rid, (prompt, n)) in enumerate(reqs.items()):
        eng.add(rid, prompt, n, arrival=float(i))
    return reqs


@pytest.mark.parametrize("chunked", [True, False])
def test_tiny_cache_preempts_and_every_sequence_completes_identically(chunked: bool):
    outputs = {}
    for num_blocks in (512, 10):
        cfg = config(max_num_batched_tokens=32, enable_chunked_prefill=chunked)
        eng = FakeEngine(cfg, num_blocks=num_blocks)
        reqs = _workload(eng)
        eng.run()
        assert sorted(s.request_id for s in eng.finished) == sorted(reqs)
        assert all(s.finish_reason is FinishReason.LENGTH for s in eng.finished)
        outputs[num_blocks] = {s.request_id: s.output_token_ids for s in eng.finished}
        preemptions = sum(len(o.preempted) for o in eng.steps)
        assert (preemptions > 0) == (num_blocks == 10)
        assert eng.bm.num_used_blocks == 0
        eng.bm.check_invariants([])
    assert outputs[10] == outputs[512]
    for rid, (prompt, n) in reqs.items():
        assert outputs[10][rid] == reference_outputs(prompt, n)


def test_preempted_sequence_goes_to_the_front_and_keeps_its_outputs():
    eng = FakeEngine(config(max_num_batched_tokens=64), num_blocks=4)
    a = eng.add("a", [1, 2, 3, 4, 5, 6], 6, arrival=0.0)
    b = eng.add("b", [9, 8, 7, 6, 5], 6, arrival=1.0)
    eng.add("c", [3, 3], 2, arrival=2.0)
    for _ in range(20):
        out = eng.step()
        if out.preempted:
            break
    assert out.preempted == [b]  # the newest running one
    assert b.status is SequenceStatus.WAITING and b.num_preemptions == 1
    assert b.num_computed_tokens == 0 and b.num_output_tokens > 0
    assert eng.sched.waiting[0] is b
    assert all(c.seq is not b for c in out.chunks)
    eng.run()
    assert a.output_token_ids == reference_outputs(a.prompt_token_ids, 6)
    assert b.output_token_ids == reference_outputs(b.prompt_token_ids, 6)


def test_prefix_cache_hits_recorded_on_first_admission():
    eng = FakeEngine(config(), num_blocks=64)
    a = eng.add("a", list(range(13)), 2, arrival=0.0)
    eng.run()
    b = eng.add("b", list(range(12)) + [99], 2, arrival=1.0)
    out = eng.step()
    assert b.num_cached_tokens == 12 and out.chunks[0].start == 12
    eng.run()
    assert a.num_cached_tokens == 0
    assert b.output_token_ids == reference_outputs(b.prompt_token_ids, 2)


def test_abort_from_waiting_and_running_frees_everything():
    eng = FakeEngine(config(max_num_seqs=2), num_blocks=64)
    seqs = [eng.add(f"r{i}", list(range(10 + i)), 50, arrival=i) for i in range(4)]
    out = eng.sched.schedule(now=0.0)  # r0 and r1 admitted; the runner "runs" the step...
    assert eng.sched.num_running == 2 and eng.sched.num_waiting == 2
    assert eng.sched.abort("r3") is seqs[3]  # waiting
    assert eng.sched.abort("r0") is seqs[0]  # running, mid-step
    for s in (seqs[0], seqs[3]):
        assert s.status is SequenceStatus.FINISHED and s.finish_reason is FinishReason.ABORT
        assert s.block_table == []
    eng.check()
    assert eng.sched.abort("r0") is None and eng.sched.abort("missing") is None
    eng.sched.on_step_done(out)  # ...and reports back: the aborted r0 is left alone
    assert seqs[0].num_computed_tokens == 0 and seqs[1].num_computed_tokens == 11
    eng.check()
    assert eng.sched.abort("r1") and eng.sched.abort("r2")
    assert not eng.sched.has_unfinished()
    assert eng.bm.num_used_blocks == 0
    eng.bm.check_invariants([])


def test_sequence_larger_than_the_cache_finishes_with_length():
    eng = FakeEngine(config(), num_blocks=3)  # 12 token slots
    huge = eng.add("huge", list(range(13)), 2, arrival=0.0)
    ok = eng.add("ok", [1, 2, 3], 20, arrival=1.0)
    out = eng.step()
    assert out.finished == [huge] and huge.finish_reason is FinishReason.LENGTH
    eng.run()
    # "ok" grows until its tokens no longer fit the cache, then stops the same way.
    assert ok.finish_reason is FinishReason.LENGTH and ok.num_tokens == 13
    assert ok.output_token_ids == reference_outputs([1, 2, 3], 10)


def test_duplicate_request_id_rejected():
    eng = FakeEngine(config(), num_blocks=8)
    eng.add("x", [1], 1)
    with pytest.raises(ValueError, match="already"):
        eng.add("x", [2], 1)


@settings(max_examples=30, deadline=None)
@given(
    prompts=st.lists(
        st.tuples(st.lists(st.integers(0, 3), min_size=1, max_size=24), st.integers(1, 8)),
        min_size=1,
        max_size=8,
    ),
    num_blocks=st.integers(8, 40),
    block_size=st.integers(1, 4),
    budget=st.integers(4, 40),
    max_seqs=st.integers(1, 6),
    chunked=st.booleans(),
    caching=st.booleans(),
)
def test_random_workloads_complete_correctly(
    prompts, num_blocks, block_size, budget, max_seqs, chunked, caching
):
    cfg = EngineConfig(
        block_size=block_size,
        max_num_batched_tokens=budget,
        max_num_seqs=max_seqs,
        enable_chunked_prefill=chunked,
        enable_prefix_caching=caching,
    )
    eng = FakeEngine(cfg, num_blocks=num_blocks)
    for i, (prompt, n) in enumerate(prompts):
        eng.add(f"r{i}", prompt, n, arrival=float(i))
    eng.run()
    capacity = num_blocks * block_size
    for seq in eng.finished:
        prompt, n = prompts[int(seq.request_id[1:])]
        expected = reference_outputs(prompt, n)
        if len(prompt) + n - 1 > capacity:  # the last token is never written to the cache
            assert seq.finish_reason is FinishReason.LENGTH
            expected = expected[: max(0, capacity - len(prompt) + 1)]
        assert seq.output_token_ids == expected
    assert len(eng.finished) == len(prompts)
    assert eng.bm.num_used_blocks == 0


class _DecidesEverything(FcfsPolicy):
    """fcfs that downgrades r0, marks r1 judged, refuses r2, and admits r0 and r1."""

    def __init__(self) -> None:
        self.views: list[SchedulerView] = []

    def plan(self, view: SchedulerView) -> StepPlan:
        self.views.append(view)
        plan = super().plan(view)
        by_id = {r.request_id: r for r in view.waiting}
        if "r0" not in by_id:
            return plan
        slower = ServiceTerms(tier="high", rank=2, promise=Promise(5.0, 9.0, 7))
        return replace(
            plan,
            admit=(by_id["r0"], by_id["r1"]),
            downgrade=(Downgrade(by_id["r0"], slower),),
            judged=(by_id["r1"],),
            refuse=(Refusal(by_id["r2"], 3.0),),
        )


def test_the_scheduler_applies_a_plans_decisions_as_values():
    cfg = config(max_num_batched_tokens=64)
    policy = _DecidesEverything()
    sched = Scheduler(cfg, BlockManager(64, cfg.block_size, True), policy)
    seqs = [Sequence(f"r{i}", [1] * 4, SamplingParams(max_tokens=2)) for i in range(3)]
    for seq in seqs:
        sched.add(seq)
    out = sched.schedule(0.0)
    r0, r1, r2 = seqs
    assert [c.seq for c in out.chunks] == [r0, r1]
    assert r0.terms is not None and r0.terms.promise.tokens_per_s == 5.0  # downgraded
    assert r1.judged_on_arrival and not r0.judged_on_arrival
    assert [(s.seq, s.retry_after_s) for s in out.shed] == [(r2, 3.0)]
    assert r2.finish_reason is FinishReason.SHED
    # Every request the plan saw is no longer new, and each chunk says when it last ran.
    assert all(s.seen_by_plan for s in seqs)
    assert r0.last_scheduled_step == r1.last_scheduled_step == policy.views[0].step_index == 1
    sched.schedule(1.0)
    assert policy.views[1].step_index == 2


def test_the_policy_sees_the_last_step_once():
    cfg = config()
    policy = _DecidesEverything()
    sched = Scheduler(cfg, BlockManager(16, cfg.block_size, True), policy)
    stats = StepStats(0.0, 0.01, 1, 1, 0, 4, 1, 0, 0, 1, 0.1)
    sched.record_step(stats)
    sched.schedule(0.0)
    sched.schedule(0.1)
    assert policy.views[0].last_step is stats and policy.views[1].last_step is None


def test_a_waiting_request_too_long_for_the_whole_cache_never_reaches_the_policy():
    cfg = config()
    policy = _DecidesEverything()
    sched = Scheduler(cfg, BlockManager(2, cfg.block_size, True), policy)  # 8 tokens in all
    long = Sequence("long", [1] * 9, SamplingParams(max_tokens=2))
    sched.add(long)
    out = sched.schedule(0.0)
    assert out.finished == [long] and long.finish_reason is FinishReason.LENGTH
    assert policy.views[0].waiting == ()


class _ThreeTokensAStep(FcfsPolicy):
    """fcfs that runs each prompt three query tokens a step."""

    def plan(self, view: SchedulerView) -> StepPlan:
        plan = super().plan(view)
        return replace(plan, query_caps={r.request_id: 3 for r in plan.run})


def test_a_plan_may_cap_a_running_requests_query_tokens():
    cfg = config(max_num_batched_tokens=4)
    sched = Scheduler(cfg, BlockManager(64, cfg.block_size, True), _ThreeTokensAStep())
    seq = Sequence("r0", list(range(1, 11)), SamplingParams(max_tokens=2))
    sched.add(seq)
    chunks = []
    while seq.num_computed_tokens < seq.num_prompt_tokens:
        out = sched.schedule(0.0)
        chunks.append(out.chunks[0].num_tokens)
        sched.on_step_done(out)
    # Admission takes what the budget allows; once running, the plan's cap holds.
    assert chunks == [4, 3, 3]
