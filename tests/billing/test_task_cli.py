"""`tokenfactory keys create|update --task-budget-usd`, `usage --by task` and
`invoice --by task` through the real Typer app."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from tokenfactory.billing import Billing

from .conftest import settle_simple
from .test_cli import cli


def test_keys_create_and_update_set_the_budget_per_task(data_dir: Path, catalog):
    res = cli(data_dir, "keys", "create", "--name", "agent", "--tier", "high",
              "--task-budget-usd", "0.25")
    assert res.exit_code == 0, res.output
    assert "budget per task $0.25" in res.output
    [row] = json.loads(cli(data_dir, "keys", "list", "--json").stdout)
    assert row["task_budget_micro_usd"] == 250_000 and row["budget_micro_usd"] is None
    assert "$0.25" in cli(data_dir, "keys", "list").stdout

    res = cli(data_dir, "keys", "update", row["prefix"], "--task-budget-usd", "1.5",
              "--budget-usd", "10")
    assert res.exit_code == 0, res.output
    [row] = json.loads(cli(data_dir, "keys", "list", "--json").stdout)
    assert (row["task_budget_micro_usd"], row["budget_micro_usd"]) == (1_500_000, 10_000_000)
    res = cli(data_dir, "keys", "update", row["key_id"], "--task-budget-usd", "none")
    assert res.exit_code == 0, res.output
    [row] = json.loads(cli(data_dir, "keys", "list", "--json").stdout)
    assert (row["task_budget_micro_usd"], row["budget_micro_usd"]) == (None, 10_000_000)


@pytest.mark.parametrize(
    "args",
    [
        ["keys", "create", "--name", "x", "--tier", "high", "--task-budget-usd", "-1"],
        ["keys", "create", "--name", "x", "--tier", "high", "--task-budget-usd", "a lot"],
        ["keys", "update", "key_doesnotexist", "--task-budget-usd", "1"],
        ["keys", "update", "key_doesnotexist"],
        ["invoice", "--account", "a", "--month", "2026-11", "--by", "planet"],
    ],
)
def test_bad_task_budget_input_is_one_clear_line_and_exit_2(data_dir: Path, args):
    res = cli(data_dir, *args)
    assert res.exit_code == 2, res.output
    assert "error" in res.output.lower()


def test_usage_and_invoice_by_task(data_dir: Path, catalog):
    b = Billing.open(catalog, data_dir=data_dir, progress_interval_s=0)
    key, _ = b.create_key("agent", "high", account="acme")
    for i, task in enumerate(["t-one", "t-one", "t-two", None]):
        res = b.admit(key, request_id=f"r{i}", model="m", tier=catalog["high"],
                      prompt_tokens=100, max_completion_tokens=50, task_id=task)
        settle_simple(b, res, catalog["high"], prompt=100, completion=50)
    month = b.entries()[0].finished_at.strftime("%Y-%m")
    b.close()

    rows = json.loads(cli(data_dir, "usage", "--by", "task", "--json").stdout)
    assert {r["task_id"]: r["requests"] for r in rows} == {"t-one": 2, "t-two": 1, None: 1}
    table = cli(data_dir, "usage", "--by", "task").stdout
    assert "t-one" in table and "task_id" in table and "total" in table

    res = cli(data_dir, "invoice", "--account", "acme", "--month", month, "--by", "task")
    assert res.exit_code == 0, res.output
    lines = list(csv.DictReader(io.StringIO(res.stdout)))
    assert [(ln["task_id"], ln["requests"]) for ln in lines] == [
        ("t-one", "2"), ("t-two", "1"), ("", "1"), ("", "4")
    ]
    doc = json.loads(cli(data_dir, "invoice", "--account", "acme", "--month", month,
                         "--by", "task", "--format", "json").stdout)
    assert doc["by"] == "task" and [ln["task_id"] for ln in doc["lines"]] == [
        "t-one", "t-two", None
    ]
