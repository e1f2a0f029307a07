"""The agent workload sends one task id per session and the report prices each task, from the
responses' usage and from the endpoint's ledger (the fake endpoint keeps one)."""

from __future__ import annotations

import httpx
import pytest
from typer.testing import CliRunner

from tokenfactory.bench.serve.client import RequestRecord
from tokenfactory.bench.serve.metrics import cost_micro_usd
from tokenfactory.bench.serve.report import load_report
from tokenfactory.bench.serve.runner import LoadPoint
from tokenfactory.bench.serve.tasks import fetch_ledger_costs, task_rows, tasks_doc
from tokenfactory.bench.serve.workloads import WorkloadOptions
from tokenfactory.cli import app
from tokenfactory.tiers import load_tiers

from .conftest import fake_endpoint, run_load

pytestmark = pytest.mark.integration  # the fake endpoint runs as its own process

AGENT = WorkloadOptions(
    "agent", output_len="4", agent_system_tokens=64, agent_user_tokens=8,
    agent_tool_result_tokens=16, agent_turns=2, agent_steps=2, agent_think_time_s=0,
    agent_tool_latency_s=0, tier_mix={"standard": 1, "super": 1}, task_prefix="run1-",
)


def test_each_agent_session_sends_its_own_task_id_on_every_request():
    with fake_endpoint() as ep:
        result, catalog = run_load(ep.base, LoadPoint(max_concurrency=4), 16, AGENT)
        stats = ep.stats()
    sent = stats["task_ids"]
    assert len(sent) == 16 + 1  # the uncounted warm-up request carries none
    assert sent.count(None) == 1
    by_session = {r.session: r.task_id for r in result.records}
    assert all(task == "run1-" + session for session, task in by_session.items())
    assert len(set(by_session.values())) == 4  # 4 requests per session, 16 requests
    rows = task_rows(result.records, catalog)
    assert [r["requests"] for r in rows] == [4, 4, 4, 4]
    for row in rows:
        mine = [r for r in result.records if r.task_id == row["task_id"]]
        assert 0 < row["cached_tokens"] < row["prompt_tokens"]
        assert row["prompt_tokens"] == sum(r.prompt_tokens for r in mine)
        assert row["cost_micro_usd"] == sum(cost_micro_usd(r, catalog) for r in mine) > 0


def test_cost_per_task_matches_the_ledger_and_is_reported_per_tier(tmp_path):
    with fake_endpoint() as ep:
        out = tmp_path / "agent.json"
        result = CliRunner().invoke(app, [
            "bench", "serve", "--base-url", ep.base, "--no-progress", "--no-html",
            "--out", str(out), "--workload", "agent", "--num-prompts", "16",
            "--max-concurrency", "4", "--output-len", "4", "--agent-system-tokens", "64",
            "--agent-user-tokens", "8", "--agent-tool-result-tokens", "16",
            "--agent-turns", "2", "--agent-steps", "2", "--agent-think-time", "0",
            "--agent-tool-latency", "0", "--tier-mix", "standard=1,super=1",
        ])
        assert result.exit_code == 0, result.output
    doc = load_report(out)
    [run] = doc["runs"]
    tasks = run["tasks"]
    assert tasks["ledger"] is True
    assert sum(t["requests"] for t in tasks["tasks"]) == 16
    for row in tasks["tasks"]:
        assert row["task_id"].startswith("bench-")
        assert row["cost_micro_usd"] > 0
        assert row["ledger_cost_micro_usd"] == row["cost_micro_usd"]  # same usage, same prices
        mine = [r for r in run["requests"] if r.get("task_id") == row["task_id"]]
        assert sum(r["cost_micro_usd"] for r in mine) == row["cost_micro_usd"]
    assert set(tasks["by_tier"]) == {"standard", "super"}
    for tier, s in tasks["by_tier"].items():
        hit = s["prefix_cache_hit"]
        assert hit == run["summary"]["tiers"][tier]["tokens"]["cached_share"] and 0 < hit < 1
        assert s["ledger_cost_per_task_micro_usd"]["mean"] == s["cost_per_task_micro_usd"]["mean"]
        # the fake endpoint caches only the previous prompt, not the reply: under the ceiling
        assert s["first_request_cache_hit"] == 0
        assert 0 < s["later_requests_cache_hit"] < s["later_requests_reuse_ceiling"] <= 1
    assert "cost per task" in result.output and "prefix-cache hit" in result.output


def test_no_task_section_without_task_ids_and_no_ledger_without_the_endpoint():
    catalog = load_tiers(None, "cpu")
    plain = [RequestRecord(0, "standard", prompt_tokens=10, completion_tokens=2)]
    assert tasks_doc(plain, catalog, None) is None
    with fake_endpoint() as ep, httpx.Client() as client:
        assert fetch_ledger_costs(client, ep.base + "/nope", {None}, {"t"}) is None
        assert fetch_ledger_costs(client, ep.base + "/v1", {None}, set()) is None


def test_reuse_is_split_into_first_and_later_requests_with_a_ceiling():
    catalog = load_tiers(None, "cpu")

    def rec(step: int, prompt: int, cached: int, out: int) -> RequestRecord:
        return RequestRecord(step, "standard", "s", step, prompt_tokens=prompt,
                             cached_tokens=cached, completion_tokens=out, task_id="t")

    records = [rec(0, 100, 64, 10), rec(1, 150, 96, 5), rec(2, 200, 144, 7)]
    [row] = task_rows(records, catalog)
    assert row["first_request"] == {"prompt_tokens": 100, "cached_tokens": 64}
    # seen before: 100 + 10 - 1 of request 1, 150 + 5 - 1 of request 2
    assert row["later_requests"] == {"prompt_tokens": 350, "cached_tokens": 240,
                                     "seen_tokens": 109 + 154}
    tier = tasks_doc(records, catalog, None)["by_tier"]["standard"]
    assert tier["first_request_cache_hit"] == 0.64
    assert tier["later_requests_cache_hit"] == 240 / 350
    assert tier["later_requests_reuse_ceiling"] == 263 / 350
    assert tier["prefix_cache_hit"] == 304 / 450
