"""`tokenfactory agent` against a real factory process with the embedded model: one simple
task, run as a user runs it. The tiny model need not solve it; the run must work end to end
(tools sent, steps taken, tokens and cost counted at the factory's prices, task id kept)."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from tests.server.conftest import ledger_rows, start_server, tokenfactory_cmd
from tokenfactory.agent.taskset import load_tasks

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def factory(tmp_path_factory):
    server = start_server(tmp_path_factory.mktemp("agent-factory"))
    yield server
    server.stop()


def test_agent_runs_a_file_task_against_the_real_factory(factory, tmp_path):
    task = {t.name: t for t in load_tasks()}["create_file"]
    ws = tmp_path / "ws"
    ws.mkdir()
    out = tmp_path / "summary.json"
    done = subprocess.run(
        [*tokenfactory_cmd(), "agent", task.prompt, "--workspace", str(ws),
         "--base-url", factory.base_url, "--api-key", factory.keys["standard"],
         "--tier", "standard", "--task-id", "task-e2e-1", "--max-steps", "2",
         "--max-tokens", "64", "--temperature", "0", "--json", str(out)],
        capture_output=True, text=True, timeout=600, env={**os.environ, "COLUMNS": "200"},
    )
    assert done.returncode in (0, 1), done.stderr  # 1: a limit stopped it; 2 would be an error
    summary = json.loads(out.read_text())
    assert summary["task_id"] == "task-e2e-1"
    assert summary["stop_reason"] in (None, "step limit", "reply cut at max tokens")
    assert summary["model"] == "SmolLM2-135M-Instruct" and summary["tier"] == "standard"
    totals = summary["totals"]
    assert 1 <= totals["steps"] <= 2
    assert totals["prompt_tokens"] > 0
    assert totals["completion_tokens"] > 0
    # standard: $0.75 in, $0.075 cached, $3 out per million tokens, rounded up per request
    uncached = totals["prompt_tokens"] - totals["cached_tokens"]
    exact = uncached * 0.75 + totals["cached_tokens"] * 0.075 + totals["completion_tokens"] * 3
    assert exact <= totals["cost_micro_usd"] <= exact + totals["steps"]
    assert "step 1" in done.stderr and "task-e2e-1" in done.stderr
    # The factory billed every request of the run to the task, for what the runner counted.
    rows = [r for r in ledger_rows(factory.data_dir).values() if r["task_id"] == "task-e2e-1"]
    assert len(rows) == totals["steps"]
    assert sum(r["amount_micro_usd"] for r in rows) == totals["cost_micro_usd"]
    # ... and the runner read that back through GET /v1/usage?by=task.
    assert summary["factory_bill"]["amount_micro_usd"] == totals["cost_micro_usd"]
    assert summary["factory_bill"]["requests"] == totals["steps"]
