"""`tokenfactory keys|usage|invoice` through the real Typer app (and one real process)."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tokenfactory.billing import Billing
from tokenfactory.billing import cli as billing_cli
from tokenfactory.cli import app

from .conftest import settle_simple

runner = CliRunner()


def cli(data_dir: Path, *args: str):
    # Wide tables show whole ids. COLUMNS alone does not widen a console made while it was
    # already set (pytest-xdist's workers set it to 80), so the width is set here too.
    saved = billing_cli.out.width
    billing_cli.out.width = 200
    try:
        result = runner.invoke(app, [*args, "--data-dir", str(data_dir)], env={"COLUMNS": "200"})
    finally:
        billing_cli.out.width = saved
    assert "Traceback" not in result.output
    return result


def test_keys_create_list_revoke(data_dir: Path, catalog):
    res = cli(data_dir, "keys", "create", "--name", "alice", "--tier", "high", "--account",
              "acme", "--budget-usd", "2.50", "--rpm", "30", "--tpm", "9000")
    assert res.exit_code == 0, res.output
    raw = res.stdout.strip().splitlines()[0]
    assert raw.startswith("tf-")
    b = Billing.open(catalog, data_dir=data_dir, progress_interval_s=0)
    key = b.authenticate(raw)
    assert (key.account, key.tier, key.budget_micro_usd, key.rpm, key.tpm) == (
        "acme", "high", 2_500_000, 30, 9000)
    b.close()

    res = cli(data_dir, "keys", "list")
    assert res.exit_code == 0 and key.key_id in res.stdout and "$2.5" in res.stdout
    assert raw not in res.output
    res = cli(data_dir, "keys", "list", "--json")
    [row] = json.loads(res.stdout)
    assert row["prefix"] == key.prefix and row["revoked"] is False

    res = cli(data_dir, "keys", "revoke", key.prefix)
    assert res.exit_code == 0, res.output
    [row] = json.loads(cli(data_dir, "keys", "list", "--json").stdout)
    assert row["revoked"] is True


@pytest.mark.parametrize(
    "args",
    [
        ["keys", "create", "--name", "x", "--tier", "platinum"],
        ["keys", "create", "--name", "x", "--tier", "high", "--budget-usd", "-3"],
        ["keys", "create", "--name", "x", "--tier", "high", "--budget-usd", "lots"],
        ["keys", "create", "--name", "x", "--tier", "high", "--rpm", "0"],
        ["keys", "revoke", "key_doesnotexist"],
        ["usage", "--since", "yesterday"],
        ["usage", "--by", "week"],
        ["usage", "--key", "tf-nothing"],
        ["invoice", "--account", "a", "--month", "2026-13"],
        ["invoice", "--account", "a", "--month", "2026-11", "--format", "xml"],
        ["keys", "list", "--tier-preset", "tpu"],
    ],
)
def test_bad_input_is_one_clear_line_and_exit_2(data_dir: Path, args):
    res = cli(data_dir, *args)
    assert res.exit_code == 2, res.output
    assert "error" in res.output.lower()


def test_usage_and_invoice(data_dir: Path, catalog, tmp_path: Path):
    b = Billing.open(catalog, data_dir=data_dir, progress_interval_s=0)
    key, _ = b.create_key("alice", "high", account="acme")
    for i, tier in enumerate(["high", "standard", "high"]):
        res = b.admit(key, request_id=f"r{i}", model="m", tier=catalog["high"],
                      prompt_tokens=100, max_completion_tokens=100)
        settle_simple(b, res, catalog[tier], prompt=100, completion=50)
    month = b.entries()[0].finished_at.strftime("%Y-%m")
    total = sum(e.amount_micro_usd for e in b.entries())
    b.close()

    res = cli(data_dir, "usage", "--by", "tier")
    assert res.exit_code == 0, res.output
    assert "high" in res.stdout and "standard" in res.stdout and "total" in res.stdout
    rows = json.loads(cli(data_dir, "usage", "--by", "day", "--json").stdout)
    assert sum(r["requests"] for r in rows) == 3
    rows = json.loads(cli(data_dir, "usage", "--key", key.prefix, "--by", "key", "--json").stdout)
    assert rows[0]["key_id"] == key.key_id and rows[0]["amount_micro_usd"] == total

    res = cli(data_dir, "invoice", "--account", "acme", "--month", month)
    assert res.exit_code == 0, res.output
    lines = list(csv.DictReader(io.StringIO(res.stdout)))
    assert lines[-1]["tier"] == "TOTAL" and int(lines[-1]["amount_micro_usd"]) == total
    out = tmp_path / "inv" / "acme.json"
    res = cli(data_dir, "invoice", "--account", "acme", "--month", month, "--format", "json",
              "--out", str(out))
    assert res.exit_code == 0, res.output
    assert json.loads(out.read_text())["total_micro_usd"] == total


@pytest.mark.integration  # the installed command, as its own process
def test_a_real_process_reports_bad_input_without_a_traceback(data_dir: Path):
    proc = subprocess.run(
        [sys.executable, "-m", "tokenfactory.cli", "keys", "create", "--name", "x", "--tier",
         "platinum", "--data-dir", str(data_dir)],
        capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "200"},
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "error: unknown tier 'platinum'; use one of: free, standard, high, ultra, super"
    ]
