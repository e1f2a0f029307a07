"""Shared pieces of the `tier` policy tests: a simulated engine on a synthetic clock, requests
built by hand, and single decisions read through a plan's context.

`Sim` drives the real Scheduler and BlockManager; a step "takes" what a synthetic cost model
says, the clock advances by that much, and the policy learns the cost from the StepStats it
is told about, exactly as under the engine.
"""

from __future__ import annotations

from collections.abc import Sequence as SequenceABC

from tests.scheduling.views import view_of
from tokenfactory.engine.block_manager import BlockManager
from tokenfactory.engine.config import EngineConfig
from tokenfactory.engine.sampling_params import SamplingParams
from tokenfactory.engine.scheduler import Scheduler, SchedulerOutput
from tokenfactory.engine.sequence import Sequence, SequenceStatus
from tokenfactory.scheduling.calibration import step_cost
from tokenfactory.scheduling.policy import SchedulingPolicy, make_policy
from tokenfactory.scheduling.simulator import SimulatedEngine
from tokenfactory.scheduling.step_model import StepCoefficients, StepTimeModel
from tokenfactory.scheduling.tier.admission import downgrade, fits
from tokenfactory.scheduling.tier.context import PlanContext
from tokenfactory.scheduling.tier.policy import TierPolicy
from tokenfactory.scheduling.tier.running import RunningPlan, plan_running
from tokenfactory.tiers import ServiceTerms, load_tiers

TIERS = load_tiers(preset="cpu")  # free 1, standard 4, high 8, ultra 15, super 25 tokens/s
COST = StepCoefficients(
    base_s=0.01, per_decode_s=0.002, per_prefill_token_s=0.0002, per_kv_token_s=1e-7
)
# Fitted on the reference VM (data/step_costs.toml): today's engine, and a slower machine where
# a paced super request leaves little room beside it (the overload scenarios).
EMBEDDED_CPU_COST = step_cost("embedded-cpu")
SLOWER_CPU_COST = step_cost("slower-cpu")


def terms(
    tier: str, received_at: float, sheddable: bool = False, fallbacks: bool = False
) -> ServiceTerms:
    """A request's terms at `tier`: no fallbacks and not sheddable unless asked."""
    t = TIERS[tier]
    return ServiceTerms(
        tier=t.name,
        rank=t.rank,
        promise=t.promise,
        fallbacks=TIERS.service_terms(t).fallbacks if fallbacks else (),
        sheddable=sheddable,
        received_at=received_at,
    )


class Sim(SimulatedEngine):
    """The simulated engine, plus which steps gave each request a token and invariant checks."""

    def __init__(
        self,
        policy: SchedulingPolicy | str,
        cost: StepCoefficients = COST,
        num_blocks: int = 4096,
        **cfg,
    ):
        policy = make_policy(policy) if isinstance(policy, str) else policy
        super().__init__(policy, cost, num_blocks=num_blocks)
        if cfg:  # scheduler options beyond the simulator's own
            self.config = EngineConfig(block_size=16, **cfg)
            self.scheduler = Scheduler(self.config, self.block_manager, policy)
        self.token_steps: dict[str, list[int]] = {}  # step indices that gave each a token

    @property
    def sched(self) -> Scheduler:
        return self.scheduler

    @property
    def bm(self) -> BlockManager:
        return self.block_manager

    def add(  # type: ignore[override]
        self, rid: str, tier: str | None, prompt_len: int = 32, max_tokens: int = 50
    ) -> Sequence:
        t = terms(tier, self.now) if tier else None
        seq = Sequence(rid, [1 + i % 97 for i in range(prompt_len)], SamplingParams(), terms=t)
        seq.params.max_tokens = max_tokens
        self.token_steps[rid] = []
        return super().add(seq)

    def step(self) -> SchedulerOutput:
        plan = super().step()
        for c in plan.chunks:
            if c.samples:
                self.token_steps[c.seq.request_id].append(len(self.steps))
        self.bm.check_invariants(self.sched.running)
        return plan

    def run(self, until: float | None = None, max_steps: int = 100_000) -> None:
        while self.sched.has_unfinished() and (until is None or self.now < until):
            self.step()
            assert len(self.steps) < max_steps, "no progress"


def running_seq(rid: str, tier: str | None, outputs: int, first_token_time: float) -> Sequence:
    """A decoding sequence as the scheduler holds it, for direct policy calls."""
    t = terms(tier, 0.0) if tier else None
    seq = Sequence(rid, [1] * 20, SamplingParams(max_tokens=1000), terms=t)
    seq.output_token_ids = [7] * outputs
    seq.num_computed_tokens = seq.num_tokens - 1
    seq.status = SequenceStatus.RUNNING
    seq.first_token_time = first_token_time
    seq.arrival_time = 0.0
    return seq


def waiting_seq(rid: str, tier: str, received_at: float = 0.0, **kw) -> Sequence:
    """A queued 8-token request of `tier` (terms options as `terms`)."""
    return Sequence(rid, [1] * 8, SamplingParams(), terms=terms(tier, received_at, **kw))


def fitted(cost: StepCoefficients = COST) -> StepTimeModel:
    return StepTimeModel(prior=cost, skip_first=0)


def context(
    policy: TierPolicy,
    now: float = 0.0,
    running: SequenceABC[Sequence] = (),
    waiting: SequenceABC[Sequence] = (),
    **view,
) -> PlanContext:
    """The context a plan of `policy` would read requests by at `now`."""
    return policy.context(view_of(running=running, waiting=waiting, now=now, **view))


def may_admit(
    policy: TierPolicy,
    seq: Sequence,
    running: SequenceABC[Sequence],
    now: float = 0.0,
    **view,
) -> bool:
    """One admission decision on its own: `seq` fits now, at its tier or a slower one."""
    ctx = context(policy, now, running, [seq], **view)
    return fits(ctx, seq, running) or downgrade(ctx, seq, running) is not None


def utilization(policy: TierPolicy, seqs: SequenceABC[Sequence], now: float = 0.0) -> float:
    """The busy share of the engine's time `seqs` need, kept at their promises."""
    ctx = context(policy, now)
    return ctx.busy(ctx.sum_load(seqs))


def running_plan(
    policy: TierPolicy,
    running: SequenceABC[Sequence],
    now: float,
    step_index: int = 1,
    waiting: SequenceABC[Sequence] = (),
) -> RunningPlan:
    """Which running requests step at `now`, in order, and the step's token cap."""
    ctx = context(policy, now, running, waiting, step_index=step_index)
    return plan_running(ctx, running, waiting, step_index)
