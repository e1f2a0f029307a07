"""The simulated engine and the simulated policy benchmark (no model)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from tokenfactory.bench.policy_compare import MIX, PolicyBenchOptions, markdown, run_simulated
from tokenfactory.bench.policy_sim import SimLoad, simulate, simulate_tally
from tokenfactory.engine.sampling_params import SamplingParams
from tokenfactory.engine.sequence import FinishReason, Sequence
from tokenfactory.scheduling.calibration import step_cost
from tokenfactory.scheduling.policy import make_policy
from tokenfactory.scheduling.simulator import SimulatedEngine
from tokenfactory.scheduling.step_model import StepCoefficients
from tokenfactory.tiers import load_tiers

COST = StepCoefficients(base_s=0.02, per_decode_s=0.001, per_prefill_token_s=0.0005,
                        per_kv_token_s=0.0)
TIERS = load_tiers(preset="cpu")


def test_steps_take_what_the_cost_model_says():
    engine = SimulatedEngine(make_policy("fcfs"), COST)
    engine.add(Sequence("a", [1] * 10, SamplingParams(max_tokens=5)))
    engine.step()  # the whole prompt, sampling the first token
    assert engine.now == pytest.approx(0.02 + 10 * 0.0005)
    assert engine.ttft("a") == pytest.approx(engine.now)
    engine.drain()
    # four more single-sequence decode steps
    assert engine.now == pytest.approx(0.025 + 4 * 0.021)
    assert engine.seqs["a"].num_output_tokens == 5
    assert engine.speed("a") == pytest.approx(4 / (4 * 0.021))


def test_noise_is_bounded_and_seeded():
    def times(seed: int) -> list[float]:
        engine = SimulatedEngine(make_policy("fcfs"), COST, noise=0.2, seed=seed)
        engine.add(Sequence("a", [1] * 4, SamplingParams(max_tokens=50)))
        out = []
        while engine.has_unfinished():
            before = engine.now
            engine.step()
            out.append(engine.now - before)
        return out

    steps = times(1)
    decode = COST.predict(1, 0, 0)
    assert all(0.8 * decode - 1e-12 <= t for t in steps[1:])
    assert all(t <= 1.2 * decode + 1e-12 for t in steps[1:])
    assert len(set(round(t, 9) for t in steps[1:])) > 1
    assert times(1) == steps and times(2) != steps


def test_a_sequence_may_stop_by_itself_before_max_tokens():
    engine = SimulatedEngine(make_policy("fcfs"), COST)
    engine.add(Sequence("a", [1] * 4, SamplingParams(max_tokens=50)), stop_after=7)
    engine.drain()
    seq = engine.seqs["a"]
    assert seq.num_output_tokens == 7 and seq.finish_reason is FinishReason.STOP


def test_early_stops_leave_the_rest_of_the_load_unchanged():
    def tally(share: float):
        load = SimLoad(rate=2.0, duration_s=20, mix=MIX, seed=3, early_stop_share=share)
        return simulate_tally("fcfs", load, TIERS)

    none, some = tally(0.0), tally(0.5)
    assert none.sent == some.sent  # the same arrivals and tiers
    assert some.output_tokens < none.output_tokens  # shorter answers


def test_idle_time_passes_until_the_next_arrival():
    engine = SimulatedEngine(make_policy("fcfs"), COST)
    engine.run_until(5.0)
    assert engine.now == 5.0 and not engine.steps


def test_simulated_load_scores_like_the_load_generator():
    # A light load on fast steps: every promise kept, revenue = every request priced at the
    # tier it asked for (input + output tokens).
    fast = StepCoefficients(0.001, 0.0001, 0.00001, 0.0)
    out = simulate("fcfs", SimLoad(rate=2, duration_s=20, mix="standard=1,ultra=1"), TIERS,
                   cost=fast, noise=0.0)
    assert out["attainment"] == {"standard": 1.0, "ultra": 1.0}
    assert out["revenue_usd_per_s"] > 0
    assert out["output_tokens_per_s"] > 0
    # The same load on steps too slow for ultra: ultra misses and is billed below its price.
    slow = StepCoefficients(0.2, 0.0001, 0.00001, 0.0)
    late = simulate("fcfs", SimLoad(rate=2, duration_s=20, mix="standard=1,ultra=1"), TIERS,
                    cost=slow, noise=0.0)
    assert late["attainment"]["ultra"] == 0.0
    assert late["revenue_usd_per_s"] < out["revenue_usd_per_s"]
    # Kept promises bill what was asked; missed ones less, against the same usage at the
    # tiers asked.
    assert out["revenue_usd_per_s"] == out["revenue_at_tiers_asked_usd_per_s"]
    assert late["revenue_usd_per_s"] < 0.5 * late["revenue_at_tiers_asked_usd_per_s"]


def test_simulated_policy_comparison_writes_its_table(tmp_path):
    opts = PolicyBenchOptions(sweep_rates=(1.0, 2.0), load_levels=(1.0, 1.5), duration_s=20,
                              mix=MIX, out_dir=tmp_path)
    result = run_simulated(opts, log=lambda *_: None)
    assert result["simulated"] is True
    assert set(result["levels"]) == {"fcfs", "priority", "tier"}
    assert (tmp_path / "policies-simulated.json").exists()


def test_simulated_points_pool_their_seeds(tmp_path):
    def point(seeds: tuple[int, ...]) -> dict:
        opts = PolicyBenchOptions(policies=("tier",), sweep_rates=(1.0,), load_levels=(1.0,),
                                  duration_s=20, mix=MIX, seeds=seeds, out_dir=tmp_path)
        return run_simulated(opts, log=lambda *_: None)["levels"]["tier"]["1.0"]

    one, other, both = point((0,)), point((1,)), point((0, 1))
    assert one["runs"] == 1 and both["runs"] == 2
    assert both["duration_s"] == one["duration_s"] + other["duration_s"]
    # revenue pools over the summed time: between the two runs' own rates
    low, high = sorted((one["revenue_usd_per_s"], other["revenue_usd_per_s"]))
    assert low <= both["revenue_usd_per_s"] <= high
    table = markdown({"levels": {"tier": {"1.0": both}}})
    assert "| 100% (1/s, 2 seeds) | tier |" in table


def test_bench_policies_simulate_from_the_command_line(tmp_path):
    from typer.testing import CliRunner

    from tokenfactory.cli import app

    args = ["bench", "policies", "--simulate", "--sweep", "1,2", "--levels", "1",
            "--duration", "10", "--out-dir", str(tmp_path)]
    ok = CliRunner().invoke(app, [*args, "--step-cost", "0.02,0.001,0.0005,0"])
    assert ok.exit_code == 0, ok.output
    assert "| 100% (" in ok.output and "| tier |" in ok.output
    five = CliRunner().invoke(app, [*args, "--step-cost", "0.02,0.001,0.0005,0,0.01"])
    assert five.exit_code == 0, five.output
    for bad in ("0.02,0.001", "a,b,c,d", "0,0.001,0.0005,0", "0.02,-1,0,0", "0.02,0,0,0,0,0"):
        res = CliRunner().invoke(app, [*args, "--step-cost", bad])
        assert res.exit_code == 2 and "BASE,PER_DECODE" in res.output, bad
    res = CliRunner().invoke(app, ["bench", "policies", "--step-cost", "0.02,0.001,0.0005,0"])
    assert res.exit_code == 2 and "only with --simulate" in res.output
    stops = CliRunner().invoke(app, [*args, "--early-stop-share", "0.5"])
    assert stops.exit_code == 0, stops.output
    res = CliRunner().invoke(app, ["bench", "policies", "--early-stop-share", "0.1"])
    assert res.exit_code == 2 and "only with --simulate" in res.output
    res = CliRunner().invoke(app, [*args, "--early-stop-share", "1.5"])
    assert res.exit_code == 2, res.output
    res = CliRunner().invoke(app, [*args, "--ignore-eos", "--early-stop-share", "0.2"])
    assert res.exit_code == 2 and "--ignore-eos means no request stops early" in res.output
    gpu = CliRunner().invoke(app, [
        *args, "--step-cost", "h200-llama-8b", "--step-prior", "h200-llama-8b-probe",
        "--preset", "gpu", "--mix", "free=0.5,high=0.5", "--max-num-seqs", "128",
        "--sweep", "4", "--duration", "5",
    ])
    assert gpu.exit_code == 0, gpu.output
    assert "| tier |" in gpu.output
    result = json.loads((tmp_path / "policies-simulated.json").read_text())
    assert result["step_cost"]["base_s"] == step_cost("h200-llama-8b").base_s
    assert result["step_prior"]["base_s"] == step_cost("h200-llama-8b-probe").base_s
    res = CliRunner().invoke(app, ["bench", "policies", "--preset", "gpu"])
    assert res.exit_code == 2 and "only with --simulate" in res.output
    for opt, bad, says in (("--mix", "free=1,gold=1", "unknown tier 'gold'"),
                           ("--mix", "free=x", "NAME=SHARE"),
                           ("--preset", "tpu", "tpu"),
                           ("--step-prior", "nope", "h200-llama-8b")):
        res = CliRunner().invoke(app, [*args, opt, bad])
        assert res.exit_code == 2 and says in res.output, (opt, res.output)
    for opt, bad, says in (("--levels", "x", "numbers > 0"), ("--sweep", "0,1", "numbers > 0"),
                           ("--policies", "fcfs,bogus", "unknown policy 'bogus'"),
                           ("--seeds", "1,1", "distinct whole numbers"),
                           ("--seeds", "-1", "distinct whole numbers"),
                           ("--seeds", "a", "distinct whole numbers")):
        res = CliRunner().invoke(app, ["bench", "policies", "--simulate", opt, bad])
        assert res.exit_code == 2 and says in res.output, (opt, res.output)


def test_simulated_benchmark_judges_and_bills_by_a_given_tiers_file(tmp_path):
    from typer.testing import CliRunner

    from tokenfactory.cli import app

    shipped = (Path(__file__).parents[2] / "src/tokenfactory/data/tiers.toml").read_text()
    # super promises 999 tokens/s: no step is that short, so no super request keeps it
    fast = tmp_path / "tiers.toml"
    cpu_super = "super = { tokens_per_s = 25,"
    fast.write_text(shipped.replace(cpu_super, "super = { tokens_per_s = 999,"))
    opts = PolicyBenchOptions(policies=("fcfs",), sweep_rates=(2.0,), load_levels=(1.0,),
                              duration_s=30, mix="super=1", out_dir=tmp_path)
    shipped_run = run_simulated(opts, COST, log=lambda *_: None)
    assert shipped_run["sweep"][0]["attainment"]["super"] >= 0.9
    given = run_simulated(replace(opts, tiers_file=fast), COST, log=lambda *_: None)
    assert given["sweep"][0]["attainment"] == {"super": 0.0}
    # billed below super: far less than the same tokens at super's price
    s = given["sweep"][0]
    assert s["revenue_usd_per_s"] < 0.5 * s["revenue_at_tiers_asked_usd_per_s"]
    assert opts.serve_args("tier") == ["--policy", "tier"]
    assert replace(opts, tiers_file=fast).serve_args("fcfs") == [
        "--policy", "fcfs", "--tiers", str(fast)
    ]
    broken = tmp_path / "broken.toml"
    broken.write_text("[tiers")
    for bad, says in ((tmp_path / "missing.toml", "cannot read tiers file"),
                      (broken, "not valid TOML")):
        res = CliRunner().invoke(app, ["bench", "policies", "--simulate", "--tiers", str(bad)])
        assert res.exit_code == 2 and says in res.output, res.output


@pytest.mark.parametrize("policies", [("tier",), ("fcfs", "priority", "tier")])
def test_speed_plot_has_a_panel_per_policy_even_for_one(tmp_path, policies):
    from tokenfactory.bench.policy_compare import plot_speeds

    request = {"start_s": 1.0, "tier": "ultra", "ok": True, "decode_tokens_per_s": 16.0}
    for policy in policies:
        report = {"runs": [{"requests": [request, {**request, "tier": "free"}]}]}
        (tmp_path / f"{policy}-150.json").write_text(json.dumps(report))
    out = tmp_path / "speeds.png"
    plot_speeds(tmp_path, 1.5, policies, out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
