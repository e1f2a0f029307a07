"""Speculation depth as a scheduling decision, on the simulated clock: who drafts, how deep,
and what it costs the others."""

from __future__ import annotations

from dataclasses import replace

from tests.scheduling.tier_support import terms
from tests.scheduling.views import view_of
from tokenfactory.engine.sampling_params import SamplingParams
from tokenfactory.engine.sequence import Sequence, SequenceStatus
from tokenfactory.scheduling.acceptance import AcceptanceRate, expected_tokens
from tokenfactory.scheduling.policy import make_policy
from tokenfactory.scheduling.simulator import SimulatedEngine
from tokenfactory.scheduling.speculation import (
    DraftCandidate,
    StepEstimate,
    plan_draft_tokens,
)
from tokenfactory.scheduling.step_model import StepCoefficients
from tokenfactory.tiers import ServiceTerms

# A CPU-like machine: verifying a draft token costs a tenth of a one-sequence step; a step
# grows with its batch, so drafts stop paying for themselves as the batch grows.
CPU = StepCoefficients(
    base_s=0.010, per_decode_s=0.0015, per_prefill_token_s=0.0003, per_kv_token_s=0.0,
    per_draft_token_s=0.0012,
)
SUPER_SPEED = 70.0  # tokens/s per user: more than one token per step of this batch gives


def _decoding(rid: str, tier: str | None, drafted: int = 0, accepted: int = 0) -> Sequence:
    seq = Sequence(rid, [1] * 20, SamplingParams(max_tokens=1000), terms=terms(tier, 0.0)
                   if tier else None)
    seq.output_token_ids = [7] * 5
    seq.num_computed_tokens = seq.num_tokens - 1
    seq.status = SequenceStatus.RUNNING
    seq.first_token_time = 0.0
    seq.num_draft_tokens, seq.num_accepted_draft_tokens = drafted, accepted
    return seq


def test_expected_tokens():
    assert expected_tokens(0.0, 4) == 1.0
    assert expected_tokens(1.0, 4) == 5.0
    assert abs(expected_tokens(0.5, 2) - 1.75) < 1e-12


def test_acceptance_rate_decays_toward_recent_steps():
    rate = AcceptanceRate(decay=0.5, prior_weight=0.0)
    assert rate.rate is None
    rate.observe(4, 4)
    for _ in range(10):
        rate.observe(4, 0)
    assert rate.rate is not None and rate.rate < 0.01


def test_one_rejected_draft_does_not_stop_speculation():
    rate = AcceptanceRate()
    rate.observe(4, 0)
    assert rate.rate is not None and 0.3 < rate.rate < 0.5


def test_drafts_go_deep_where_they_pay_and_stop_where_they_do_not():
    one = [DraftCandidate(_decoding("a", None))]
    cheap = StepEstimate(step_s=0.012, tokens=1, draft_token_s=0.001)
    assert plan_draft_tokens(one, cheap, 8, 0.9) == {"a": 8}
    # Acceptance so low that a draft token is worth less than the step's average rate.
    assert plan_draft_tokens(one, cheap, 8, 0.05) == {}
    # A big batch: each draft token must beat 64 tokens per step's time.
    many = [DraftCandidate(_decoding(str(i), None)) for i in range(64)]
    big = StepEstimate(step_s=0.2, tokens=64, draft_token_s=0.004)
    assert plan_draft_tokens(many, big, 8, 0.7) == {}


def test_buying_speed_spends_at_most_the_throughput_budget():
    many = [DraftCandidate(_decoding(str(i), None)) for i in range(60)]
    paying = [DraftCandidate(_decoding(f"s{i}", "super"), 100.0, True) for i in range(4)]
    step = StepEstimate(step_s=0.2, tokens=64, draft_token_s=0.004)
    drafts = plan_draft_tokens([*many, *paying], step, 8, 0.8, throughput_cost=0.05)
    assert drafts and set(drafts) <= {f"s{i}" for i in range(4)}
    gained = sum(expected_tokens(0.8, k) - 1 for k in drafts.values())
    rate = (64 + gained) / (0.2 + 0.004 * sum(drafts.values()))
    assert rate >= 0.95 * 64 / 0.2


def _fast_super(received_at: float = 0.0) -> ServiceTerms:
    """Super terms promising more than one token per step of a large batch can give."""
    t = terms("super", received_at)
    return replace(t, promise=replace(t.promise, tokens_per_s=SUPER_SPEED))


def test_tier_policy_drafts_for_paying_tiers_behind_their_promise_only():
    policy = make_policy("tier")
    policy.set_step_prior(CPU)
    running = [_decoding("free", "free"), _decoding("std", "standard"),
               _decoding("none", None), _decoding("super", "super")]
    running[-1].terms = _fast_super()
    running += [_decoding(f"f{i}", "free") for i in range(40)]
    view = view_of(running=running, now=0.2)
    assert policy.plan(view).draft_tokens == {}  # no proposer in the view: nobody drafts
    drafts = policy.plan(replace(view, max_draft_tokens=4)).draft_tokens
    assert drafts.get("super", 0) > 0
    assert not {"free", "none"} & set(drafts)
    assert not any(rid.startswith("f") for rid in drafts)


def _run(policy: str, max_draft: int, acceptance: dict[str, float],
         mix: list[tuple[str, str | None]], tokens: int = 60) -> SimulatedEngine:
    sim = SimulatedEngine(make_policy(policy), CPU, max_num_seqs=128, max_draft_tokens=max_draft,
                          seed=3)
    sim.policy.set_step_prior(CPU)
    sim.request_acceptance.update(acceptance)
    for rid, tier in mix:
        t = (_fast_super() if tier == "super" else terms(tier, 0.0)) if tier else None
        seq = Sequence(rid, [1 + i % 50 for i in range(32)], SamplingParams(max_tokens=tokens),
                       terms=t)
        sim.add(seq)
    sim.drain()
    return sim
def _speed(sim: SimulatedEngine, rids: list[str]) -> float:
    return sum(sim.speed(r) or 0.0 for r in rids) / len(rids)


def test_one_stream_speeds_up_with_good_drafts_and_never_slows_with_bad_ones():
    for policy in ("fcfs", "priority"):
        plain = _run(policy, 0, {}, [("a", None)])
        good = _run(policy, 8, {"a": 0.9}, [("a", None)])
        bad = _run(policy, 8, {"a": 0.02}, [("a", None)])
        assert good.speed("a") > 2.0 * plain.speed("a")
        assert bad.speed("a") > 0.97 * plain.speed("a")


def test_tier_mix_at_batch_64_super_faster_throughput_kept_free_never_drafts():
    mix = ([(f"free{i}", "free") for i in range(32)]
           + [(f"std{i}", "standard") for i in range(19)]
           + [(f"super{i}", "super") for i in range(13)])
    acceptance = {rid: 0.8 for rid, _ in mix}
    plain = _run("tier", 0, acceptance, mix)
    spec = _run("tier", 4, acceptance, mix)
    supers = [r for r, t in mix if t == "super"]
    assert _speed(spec, supers) >= 1.3 * _speed(plain, supers)
    total = len(mix) * 60
    assert total / spec.now >= 0.9 * total / plain.now
    for rid, tier in mix:
        if tier == "free":
            assert spec.seqs[rid].num_draft_tokens == 0
    assert sum(spec.seqs[r].num_draft_tokens for r in supers) > 0
