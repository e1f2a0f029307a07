"""The same ledger on PostgreSQL: runs only with TOKENFACTORY_TEST_POSTGRES_URL set
(e.g. postgresql://postgres@127.0.0.1:5432/postgres), in a throwaway schema it drops after."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from sqlalchemy import text

from tokenfactory.billing import Billing, InsufficientQuotaError
from tokenfactory.billing.db import make_engine, utcnow

from .conftest import PG_URL, settle_simple

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not PG_URL, reason="set TOKENFACTORY_TEST_POSTGRES_URL to run the PostgreSQL tests"
    ),
]


def test_postgres_ledger_end_to_end(pg_url: str, catalog, data_dir):
    b = Billing.open(catalog, pg_url, data_dir, progress_interval_s=0)
    assert b.engine.dialect.name == "postgresql"
    assert b.bootstrap_local_keys() is not None
    key, raw = b.create_key("alice", "ultra", account="acme", budget_micro_usd=100_000)
    assert b.authenticate(raw).key_id == key.key_id
    tier = catalog["ultra"]

    def one(i: int) -> int:
        try:
            res = b.admit(key, request_id=f"r{i}", model="m", tier=tier, prompt_tokens=200,
                          max_completion_tokens=200)
        except InsufficientQuotaError:
            return 0
        settle_simple(b, res, catalog["high"], prompt=200, cached=50, completion=100)
        settle_simple(b, res, catalog["high"], prompt=200, cached=50, completion=100)
        return 1

    with ThreadPoolExecutor(20) as pool:
        admitted = sum(pool.map(one, range(40)))
    state = b.budget_state(key)
    assert admitted > 0 and state.reserved_micro_usd == 0
    [row] = b.usage(account="acme", by="day_tier")
    assert row.requests == admitted and row.tier == "high"
    assert row.amount_micro_usd == state.spent_micro_usd
    inv = b.invoice("acme", row.day[:7])
    assert inv.total_micro_usd == state.spent_micro_usd

    lost = b.admit(key, request_id="lost", model="m", tier=tier, prompt_tokens=10,
                   max_completion_tokens=10)
    b.record_progress(lost, prompt_tokens=10, cached_tokens=0, completion_tokens=4,
                      tier_so_far="ultra")
    b.flush_progress()
    b._stop.set()
    b.engine.dispose()  # a crash: no settle

    # the next front, once the crashed one's lease has run out
    b = Billing.open(catalog, pg_url, data_dir, progress_interval_s=0,
                     wall_clock=lambda: utcnow() + timedelta(minutes=5))
    assert b.reconcile_open_reservations() == 1
    assert b.get_entry("lost").completion_tokens == 4
    assert b.reconcile_open_reservations() == 0
    assert b.bootstrap_local_keys() is None
    b.close()


def test_postgres_task_budget_under_concurrency_and_restart(pg_url: str, catalog, data_dir):
    b = Billing.open(catalog, pg_url, data_dir, progress_interval_s=0)
    key, _ = b.create_key("agent", "ultra", task_budget_micro_usd=40_000)
    tier = catalog["ultra"]

    def one(i: int) -> int:
        try:
            res = b.admit(key, request_id=f"t{i}", model="m", tier=tier, prompt_tokens=100,
                          max_completion_tokens=300, task_id="edge")
        except InsufficientQuotaError as exc:
            assert exc.task_id == "edge"
            return 0
        settle_simple(b, res, tier, prompt=100, completion=150)
        return 1

    with ThreadPoolExecutor(20) as pool:
        admitted = sum(pool.map(one, range(60)))
    state = b.task_budget_state(key, "edge")
    assert 0 < admitted < 60 and state.reserved_micro_usd == 0
    assert state.spent_micro_usd <= 40_000
    [row] = b.usage(key_id=key.key_id, by="task")
    assert (row.task_id, row.requests, row.amount_micro_usd) == (
        "edge", admitted, state.spent_micro_usd)
    b.close()
    b = Billing.open(catalog, pg_url, data_dir, progress_interval_s=0)
    assert b.task_budget_state(b.find_key(key.key_id), "edge").spent_micro_usd == (
        state.spent_micro_usd)
    b.close()


def test_postgres_upgrade_from_0001_keeps_rows(pg_url: str, catalog, data_dir):
    from alembic import command
    from alembic.config import Config

    from tokenfactory.billing.db import migrate, migrations_dir

    engine = make_engine(pg_url)
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    cfg.set_main_option("path_separator", "os")
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0001")
        conn.execute(text(
            "insert into api_keys (key_id, prefix, key_hash, name, account, tier, created_at) "
            "values ('key_1', 'tf-abc', 'h1', 'old', 'acme', 'high', now())"
        ))
    assert migrate(engine) == "0003"
    with engine.connect() as conn:
        assert conn.execute(text("select task_budget_micro_usd from api_keys")).one() == (None,)
    engine.dispose()
