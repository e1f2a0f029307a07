"""Accounting per task: task ids on reservations and ledger rows, reports by task, and a
key's budget per task (refusals, concurrency at the edge, state after a restart)."""

from __future__ import annotations

import csv
import io
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import select

from tokenfactory.billing import Billing, BillingInputError, InsufficientQuotaError
from tokenfactory.billing.db import LedgerRow, ReservationRow
from tokenfactory.billing.tasks import check_task_id

from .conftest import settle_simple


def admit(billing: Billing, key, rid: str, tier, task: str | None, completion: int = 100):
    return billing.admit(key, request_id=rid, model="m", tier=tier, prompt_tokens=0,
                         max_completion_tokens=completion, task_id=task)


def test_the_task_id_is_stored_on_the_reservation_and_the_ledger_row(billing: Billing, catalog):
    key, _ = billing.create_key("k", "high")
    res = admit(billing, key, "r1", catalog["high"], "task-42")
    with billing.engine.connect() as conn:
        row = conn.execute(select(ReservationRow.task_id)
                           .where(ReservationRow.request_id == "r1")).scalar()
    assert row == "task-42"
    entry = settle_simple(billing, res, catalog["high"], completion=10)
    assert entry.task_id == "task-42"
    assert billing.get_entry("r1").task_id == "task-42"
    untagged = settle_simple(billing, admit(billing, key, "r2", catalog["high"], None),
                             catalog["high"], completion=10)
    assert untagged.task_id is None
    with billing.engine.connect() as conn:
        stored = dict(conn.execute(select(LedgerRow.request_id, LedgerRow.task_id)).all())
    assert stored == {"r1": "task-42", "r2": None}


@pytest.mark.parametrize("bad", ["", "x" * 129, "tab\there", "new\nline", "nul\x00", "\x7f"])
def test_unusable_task_ids_are_input_errors(billing: Billing, catalog, bad: str):
    key, _ = billing.create_key("k", "high")
    with pytest.raises(BillingInputError):
        admit(billing, key, "r", catalog["high"], bad)
    assert billing.open_reservations() == []


def test_printable_task_ids_up_to_128_characters_are_accepted():
    for good in ("a", "x" * 128, "run 7 / step:3 — ünïcode", "550e8400-e29b-41d4-a716"):
        assert check_task_id(good) == good


def test_usage_and_invoice_by_task(billing: Billing, catalog):
    key, _ = billing.create_key("k", "high", account="acme")
    plan = [("a", "high", 10), ("a", "standard", 20), ("b", "high", 5), (None, "high", 1)]
    amounts: dict[str | None, int] = {}
    for i, (task, delivered, completion) in enumerate(plan):
        res = admit(billing, key, f"r{i}", catalog["high"], task)
        entry = settle_simple(billing, res, catalog[delivered], prompt=100, cached=20,
                              completion=completion)
        amounts[task] = amounts.get(task, 0) + entry.amount_micro_usd

    rows = {r.task_id: r for r in billing.usage(key_id=key.key_id, by="task")}
    assert set(rows) == {"a", "b", None}
    assert rows["a"].requests == 2 and rows["a"].completion_tokens == 30
    assert rows["a"].cached_tokens == 40 and rows["b"].prompt_tokens == 100
    assert {t: r.amount_micro_usd for t, r in rows.items()} == amounts
    assert rows["a"].as_dict()["task_id"] == "a"

    month = billing.entries()[0].finished_at.strftime("%Y-%m")
    inv = billing.invoice("acme", month, by_task=True)
    assert [(ln.task_id, ln.tier) for ln in inv.lines] == [
        ("a", "standard"), ("a", "high"), ("b", "high"), (None, "high")
    ]
    assert inv.total_micro_usd == sum(amounts.values())
    lines = list(csv.DictReader(io.StringIO(inv.to_csv())))
    assert lines[0]["task_id"] == "a" and lines[-1]["tier"] == "TOTAL"
    assert inv.as_dict()["by"] == "task"
    by_tier = billing.invoice("acme", month)
    assert all(ln.task_id is None for ln in by_tier.lines)
    assert "task_id" not in by_tier.to_csv().splitlines()[0]


def test_a_task_over_its_budget_is_refused_naming_the_task(billing: Billing, catalog):
    tier = catalog["high"]  # $6 per million output tokens: 100 tokens hold 600
    key, _ = billing.create_key("k", "high", task_budget_micro_usd=1000)
    first = admit(billing, key, "a1", tier, "alpha")
    with pytest.raises(InsufficientQuotaError) as info:
        admit(billing, key, "a2", tier, "alpha")
    exc = info.value
    assert exc.task_id == "alpha" and "'alpha'" in exc.message
    assert (exc.budget_micro_usd, exc.committed_micro_usd, exc.needed_micro_usd) == (1000, 600, 600)
    assert exc.status_code == 429 and exc.code == "insufficient_quota"
    # other tasks, and requests without a task id, are not held back by alpha's spending
    admit(billing, key, "b1", tier, "beta")
    for i in range(3):
        admit(billing, key, f"n{i}", tier, None)
    settle_simple(billing, first, tier, completion=10)  # costs 60, frees 540 of alpha's budget
    admit(billing, key, "a3", tier, "alpha")
    state = billing.task_budget_state(key, "alpha")
    assert (state.spent_micro_usd, state.reserved_micro_usd) == (60, 600)
    assert state.remaining_micro_usd == 340


def test_the_key_budget_still_applies_to_requests_with_a_task(billing: Billing, catalog):
    key, _ = billing.create_key("k", "high", budget_micro_usd=1000, task_budget_micro_usd=5000)
    admit(billing, key, "a1", catalog["high"], "alpha")
    with pytest.raises(InsufficientQuotaError) as info:
        admit(billing, key, "b1", catalog["high"], "beta")
    assert info.value.task_id is None  # the key's own budget refused it


def test_task_budget_holds_under_40_concurrent_threads(billing: Billing, catalog):
    tier = catalog["ultra"]
    budget = 50_000
    key, _ = billing.create_key("k", "ultra", task_budget_micro_usd=budget)
    lock = threading.Lock()
    peak = 0
    admitted = refused = 0
    untagged = 0

    def one(i: int) -> None:
        nonlocal peak, admitted, refused, untagged
        for j in range(6):
            task = None if j == 5 else "edge"
            try:
                res = admit(billing, key, f"r{i}-{j}", tier, task, completion=300 + i)
            except InsufficientQuotaError as exc:
                assert exc.task_id == "edge"
                with lock:
                    refused += 1
                continue
            with lock:
                admitted += 1
                untagged += task is None
                state = billing.task_budget_state(key, "edge")
                peak = max(peak, state.committed_micro_usd)
            settle_simple(billing, res, tier, completion=(300 + i) // 2)

    with ThreadPoolExecutor(40) as pool:
        list(pool.map(one, range(40)))
    state = billing.task_budget_state(key, "edge")
    assert peak <= budget and state.committed_micro_usd <= budget
    assert state.reserved_micro_usd == 0 and refused > 0 and untagged == 40
    with billing.engine.connect() as conn:
        in_ledger = conn.execute(
            select(LedgerRow.amount_micro_usd).where(LedgerRow.task_id == "edge")
        ).scalars().all()
    assert sum(in_ledger) == state.spent_micro_usd
    assert len(in_ledger) + refused + untagged == 240


def test_task_spending_survives_a_restart(catalog, data_dir: Path, clock):
    b = Billing.open(catalog, data_dir=data_dir, clock=clock, progress_interval_s=0)
    key, _ = b.create_key("k", "high", task_budget_micro_usd=1000)
    settle_simple(b, admit(b, key, "r1", catalog["high"], "t"), catalog["high"], completion=50)
    admit(b, key, "r2", catalog["high"], "t", completion=50)  # left open: a crash
    b.close()
    b = Billing.open(catalog, data_dir=data_dir, clock=clock, progress_interval_s=0)
    key = b.find_key(key.key_id)
    state = b.task_budget_state(key, "t")
    assert (state.spent_micro_usd, state.reserved_micro_usd) == (300, 300)
    with pytest.raises(InsufficientQuotaError):
        admit(b, key, "r3", catalog["high"], "t", completion=100)
    assert b.reconcile_open_reservations() == 1
    assert b.task_budget_state(key, "t").committed_micro_usd == 300  # r2 billed nothing
    admit(b, key, "r3", catalog["high"], "t", completion=100)
    b.close()


def test_update_key_sets_and_clears_budgets(billing: Billing, catalog):
    key, _ = billing.create_key("k", "high", budget_micro_usd=5)
    updated = billing.update_key(key.key_id, task_budget_micro_usd=700)
    assert (updated.budget_micro_usd, updated.task_budget_micro_usd) == (5, 700)
    updated = billing.update_key(key.prefix, budget_micro_usd=None)
    assert (updated.budget_micro_usd, updated.task_budget_micro_usd) == (None, 700)
    with pytest.raises(BillingInputError):
        billing.update_key(key.key_id, task_budget_micro_usd=-1)
    admit(billing, updated, "r1", catalog["high"], "t")  # holds 600 of 700
    with pytest.raises(InsufficientQuotaError):
        admit(billing, updated, "r2", catalog["high"], "t")
