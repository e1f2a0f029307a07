"""The `bench serve` command line each policy-benchmark point runs."""

from __future__ import annotations

from pathlib import Path

from tokenfactory.bench.policy_compare import PolicyBenchOptions, serve_bench_command


def _args(opts: PolicyBenchOptions) -> list[str]:
    return serve_bench_command(
        "http://127.0.0.1:9/v1", Path("/k/keys.json"), 2.5, opts, Path("/o/p.json"), seed=3
    )


def test_a_point_sends_the_benchmark_load_at_its_rate_and_seed():
    cmd = _args(PolicyBenchOptions(duration_s=30.0))
    assert cmd[1:3] == ["bench", "serve"]
    pairs = dict(zip(cmd[3::2], cmd[4::2], strict=False))
    assert pairs["--request-rate"] == "2.5" and pairs["--seed"] == "3"
    assert pairs["--duration"] == "30.0" and pairs["--num-prompts"] == "150"
    assert pairs["--tier-keys"] == "/k/keys.json" and pairs["--out"] == "/o/p.json"
    assert "--ignore-eos" not in cmd  # the model's own stops, by default


def test_ignore_eos_runs_every_request_to_its_max_tokens():
    assert _args(PolicyBenchOptions(ignore_eos=True))[-1] == "--ignore-eos"
