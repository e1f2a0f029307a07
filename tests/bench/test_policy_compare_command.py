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


def test_every_server_gets_the_extra_serve_options_after_its_policy():
    opts = PolicyBenchOptions(extra_serve_args=["--replicas", "2", "--threads", "1"],
                              tiers_file=Path("/t/pools.toml"))
    assert opts.serve_args("tier") == ["--policy", "tier", "--tiers", "/t/pools.toml",
                                       "--replicas", "2", "--threads", "1"]
    logged = PolicyBenchOptions(step_log_dir=Path("/o"))
    assert logged.serve_args("fcfs", "fcfs-150") == ["--policy", "fcfs", "--step-log",
                                                     "/o/fcfs-150.steps.jsonl"]


def test_serve_args_from_the_command_line_are_split_and_checked(monkeypatch):
    from typer.testing import CliRunner

    from tokenfactory import cli

    seen: list[list[str]] = []

    def fake_run(opts, log):  # the servers themselves are not what this test pins
        seen.append(opts.extra_serve_args)
        return {"levels": {}, "sweep": []}

    monkeypatch.setattr("tokenfactory.bench.policy_compare.run", fake_run)
    monkeypatch.setattr("tokenfactory.bench.policy_compare.markdown", lambda r: "")
    runner = CliRunner()
    ok = runner.invoke(cli.app, ["bench", "policies", "--levels", "1",
                                     "--serve-args", "--replicas 2 --threads 1"])
    assert ok.exit_code == 0, ok.output
    assert seen == [["--replicas", "2", "--threads", "1"]]
    for bad, says in (("--policy fcfs", "set by the benchmark"), ("--port=9", "set by the"),
                      ("--step-log x", "--step-logs"),
                      ("'--replicas", "quotation")):
        res = runner.invoke(cli.app, ["bench", "policies", "--serve-args", bad])
        assert res.exit_code == 2 and says in res.output, (bad, res.output)
    sim = runner.invoke(cli.app, ["bench", "policies", "--simulate", "--serve-args", "--threads 1"])
    assert sim.exit_code == 2 and "--simulate" in sim.output
    sim = runner.invoke(cli.app, ["bench", "policies", "--simulate", "--step-logs"])
    assert sim.exit_code == 2 and "--step-logs" in sim.output
