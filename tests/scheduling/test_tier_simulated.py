"""The `tier` policy end to end on the simulated engine: preemption, mixed loads, and the
benchmark's loads on calibrated machines (no model, a simulated clock)."""

from __future__ import annotations

import pytest

from tests.scheduling.tier_support import (
    EMBEDDED_CPU_COST,
    SLOWER_CPU_COST,
    TIERS,
    Sim,
    fitted,
    running_seq,
)
from tests.scheduling.views import view_of
from tokenfactory.scheduling.calibration import step_cost
from tokenfactory.scheduling.step_model import StepCoefficients
from tokenfactory.scheduling.tier.policy import TierPolicy
from tokenfactory.tiers import load_tiers

pytestmark = pytest.mark.integration  # whole loads through the scheduler, policy and simulator

# ---- preemption ----------------------------------------------------------------------------


def test_preemption_order_by_value():
    policy = TierPolicy()
    seqs = [
        running_seq("super", "super", 3, 0.0),
        running_seq("std", "standard", 3, 0.0),
        running_seq("free-old", "free", 3, 0.0),
        running_seq("free-new", "free", 3, 0.0),
    ]
    seqs[3].arrival_time = 1.0
    order = []
    pool = list(seqs)
    while pool:
        victim = policy.plan(view_of(running=pool)).preempt_order[0]
        order.append(victim.request_id)
        pool.remove(victim)
    assert order == ["free-new", "free-old", "std", "super"]


def test_blocks_running_short_preempt_free_work_and_everyone_finishes():
    sim = Sim("tier", num_blocks=12)
    sim.add("free", "free", prompt_len=40, max_tokens=60)
    sim.add("super", "super", prompt_len=40, max_tokens=60)
    sim.run()
    assert sim.seqs["super"].num_preemptions == 0
    assert sim.seqs["free"].num_preemptions >= 1
    assert all(s.num_output_tokens == 60 for s in sim.seqs.values())


# ---- whole loads -----------------------------------------------------------------------------


@pytest.mark.parametrize("chunked", [True, False])
@pytest.mark.parametrize("policy", ["fcfs", "priority", "tier"])
def test_every_policy_finishes_a_mixed_load(policy: str, chunked: bool):
    # Without chunked prefill the tier policy's step cap is ignored: whole prompts still run.
    sim = Sim(policy, num_blocks=64, enable_chunked_prefill=chunked, max_num_batched_tokens=256)
    tiers = ["free", "standard", "high", "ultra", "super", None]
    for i in range(24):
        sim.add(f"r{i}", tiers[i % len(tiers)], prompt_len=10 + 7 * i, max_tokens=5 + i)
    sim.run()
    assert all(s.num_output_tokens == s.params.max_tokens for s in sim.seqs.values())
    assert sim.bm.num_free_blocks == 64


def test_a_request_too_fast_for_the_machine_still_runs_when_the_engine_drains():
    # 50 ms per step: a 25 tokens/s promise cannot be kept even alone; it must not wait forever
    cost = StepCoefficients(0.05, 0.002, 0.0001, 0.0)
    policy = TierPolicy(step_model=fitted(cost))
    sim = Sim(policy, cost=cost)
    sim.add("std", "standard", max_tokens=20)
    sim.step()
    sim.add("super", "super", max_tokens=10)
    sim.add("free", "free", max_tokens=10)
    sim.run(max_steps=5_000)
    for rid in ("std", "super", "free"):
        assert sim.seqs[rid].num_output_tokens > 0, rid


def test_simulated_benchmark_load_tier_keeps_dear_promises_and_earns_more_than_fcfs():
    # The policy benchmark's mix at 1.5x the load fcfs can keep, simulated with a slower
    # machine's step costs (`SLOWER_CPU_COST`: there 3 requests/s is 1.5x what fcfs keeps;
    # today's engine is faster) over three arrival seeds: tier keeps high/ultra/super
    # promises that fcfs misses, and earns more. (The HTTP benchmark measures the same on the
    # real model: docs/performance.md.)
    from tokenfactory.bench.policy_compare import MIX
    from tokenfactory.bench.policy_sim import SimLoad, simulate

    tier: dict[str, float] = {}
    fcfs: dict[str, float] = {}
    revenue = {"tier": 0.0, "fcfs": 0.0}
    for seed in (0, 1, 2):
        load = SimLoad(rate=3.0, duration_s=60, mix=MIX, seed=seed)
        for name, into in (("tier", tier), ("fcfs", fcfs)):
            result = simulate(name, load, TIERS, cost=SLOWER_CPU_COST)
            revenue[name] += result["revenue_usd_per_s"]
            for t, share in result["attainment"].items():
                into[t] = into.get(t, 0.0) + share / 3
    for name in ("high", "ultra", "super"):
        assert tier[name] >= 0.9, (name, tier)
    assert min(fcfs["ultra"], fcfs["super"]) < 0.9, fcfs
    assert revenue["tier"] >= 1.3 * revenue["fcfs"], revenue


def test_super_requests_arriving_together_all_start_at_once_on_todays_engine():
    # Four super requests 0.1 s apart beside 12 standard ones. At today's step costs a paced
    # super step leaves room for more, so none waits for another to finish; on the slower
    # machine's costs the admission estimate holds the later ones back (the fourth until the
    # first is done, far past its 1 s TTFT).

    def ttfts_and_speeds(cost: StepCoefficients) -> list[tuple[float, float]]:
        sim = Sim("tier", cost=cost)
        for i in range(12):
            sim.add(f"std{i}", "standard", prompt_len=160, max_tokens=400)
        sim.run(until=1.0)
        for k in range(4):
            sim.add(f"super{k}", "super", prompt_len=160, max_tokens=200)
            sim.run(until=sim.now + 0.1)
        sim.run()
        return [(sim.ttft(f"super{k}"), sim.speed(f"super{k}")) for k in range(4)]

    promise = TIERS["super"]
    for ttft, speed in ttfts_and_speeds(EMBEDDED_CPU_COST):
        assert ttft <= 0.2 and speed >= promise.tokens_per_s
    slower = ttfts_and_speeds(SLOWER_CPU_COST)
    assert slower[-1][0] > promise.ttft_s


def test_deeper_overload_gives_prompt_time_to_the_dearer_tiers_first():
    # The benchmark's mix at 4.5 requests/s, every prompt computed in full: more prompt work
    # than the engine can do beside a paced super request. Prompt time goes by value first,
    # so high/ultra/super still mostly keep their promises (ordered by slack / value instead,
    # cheaper prompts near their deadlines took it: high 77%, ultra 78%, super 75%).
    from tokenfactory.bench.policy_compare import MIX
    from tokenfactory.bench.policy_sim import SimLoad, simulate

    tier: dict[str, float] = {}
    for seed in (0, 1, 2):
        load = SimLoad(rate=4.5, duration_s=60, mix=MIX, seed=seed)
        result = simulate("tier", load, TIERS, cost=SLOWER_CPU_COST)
        for t, share in result["attainment"].items():
            tier[t] = tier.get(t, 0.0) + share / 3
    for name in ("high", "ultra", "super"):
        assert tier[name] >= 0.85, (name, tier)


# Llama-3.1-8B on one H200 (random weights): the step costs the policy fitted there, and what
# the capacity probe told it before any step (data/step_costs.toml says where they come from).
H200_8B_COST = step_cost("h200-llama-8b")
H200_8B_PROBE = step_cost("h200-llama-8b-probe")


def test_on_a_gpu_the_probe_prior_and_the_capped_fit_keep_free_work_admitted():
    # The gpu preset's open tiers at 12 requests/s, with one step in 1,000 stalled 0.5 s (a
    # kernel compiled on first use: the H200 runs saw 0.5-1.2 s). Starting from the CPU
    # guess (2 ms per decoding sequence), the first H200 run refused nearly every free
    # request; with the probe's figures and stalls kept out of the fit, few are (only free
    # requests still queued past their TTFT: 12/s is past fcfs's capacity), and high keeps
    # its 100 tokens/s where fcfs lets it fall below.
    from tokenfactory.bench.policy_sim import SimLoad, simulate_tally

    gpu = load_tiers(preset="gpu")
    engine = {"cost": H200_8B_COST, "max_num_seqs": 256, "num_blocks": 60_000,
              "stall_share": 0.001, "stall_s": 0.5}
    runs: dict[str, list[dict]] = {"fcfs": [], "tier": [], "cpu guess": []}
    for seed in (0, 1):
        load = SimLoad(rate=12, duration_s=20, mix="free=0.4,standard=0.3,high=0.2",
                       input_len="lognormal:512,0.6", output_len="lognormal:256,0.5", seed=seed)
        runs["fcfs"].append(simulate_tally("fcfs", load, gpu, **engine).summary())
        runs["tier"].append(
            simulate_tally("tier", load, gpu, step_prior=H200_8B_PROBE, **engine).summary()
        )
        runs["cpu guess"].append(simulate_tally("tier", load, gpu, **engine).summary())
    for run in runs["tier"]:
        assert run["attainment"]["high"] >= 0.95
        assert min(run["attainment"]["free"], run["attainment"]["standard"]) >= 0.85
    assert max(run["attainment"]["high"] for run in runs["fcfs"]) < 0.8
    refused = {name: sum(run["errors"].get("429", 0) for run in runs[name]) for name in runs}
    assert refused["cpu guess"] > 20
    assert refused["tier"] * 4 <= refused["cpu guess"], refused


def test_on_the_h200_tier_earns_more_than_fcfs_once_fcfs_loses_high_and_never_less_before():
    # The gpu preset's open tiers (ultra and super need more than one H200 user gets), 100%
    # load ~9/s (fcfs keeps every paid promise there). Past it fcfs lets high fall below its
    # 100 tokens/s for everyone; tier keeps high and sheds free work that waited past its
    # TTFT. A 20 s run is dominated by its drain (1.06x here, 0.99x without the overdue
    # shedding); the benchmark's 60 s, two-seed runs (docs/performance.md) give 1.26x.
    from tokenfactory.bench.policy_sim import SimLoad, simulate

    gpu = load_tiers(preset="gpu")
    engine = {"cost": H200_8B_COST, "max_num_seqs": 256, "num_blocks": 65_536}
    revenue: dict[tuple[str, float], float] = {}
    for rate in (4.5, 18):
        load = SimLoad(rate=rate, duration_s=20, mix="free=0.4,standard=0.3,high=0.2",
                       input_len="lognormal:512,0.6", output_len="lognormal:256,0.5")
        for policy in ("fcfs", "tier"):
            prior = {"step_prior": H200_8B_PROBE} if policy == "tier" else {}
            result = simulate(policy, load, gpu, **engine, **prior)
            revenue[policy, rate] = result["revenue_usd_per_s"]
            if policy == "tier":
                assert result["attainment"]["high"] >= 0.99, (rate, result["attainment"])
    assert revenue["tier", 4.5] >= 0.99 * revenue["fcfs", 4.5]
    assert revenue["tier", 18] >= 1.04 * revenue["fcfs", 18]
