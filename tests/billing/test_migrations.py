from __future__ import annotations

import stat
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text

from tokenfactory.billing import Billing
from tokenfactory.billing.db import Base, make_engine, migrate, normalize_url


def test_migrations_create_the_schema_from_empty_and_match_the_models(tmp_path: Path):
    engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    assert inspect(engine).get_table_names() == []
    head = migrate(engine)
    assert head == "0003"
    tables = set(inspect(engine).get_table_names())
    assert {"api_keys", "reservations", "ledger", "billing_meta", "alembic_version"} <= tables
    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
        assert conn.execute(text("select version_num from alembic_version")).scalar() == "0003"
    engine.dispose()


def test_migrating_twice_is_harmless_and_keeps_data(tmp_path: Path, catalog):
    b = Billing.open(catalog, data_dir=tmp_path, progress_interval_s=0)
    key, _ = b.create_key("k", "standard")
    b.close()
    engine = make_engine(f"sqlite:///{tmp_path / 'ledger.db'}")
    assert migrate(engine) == "0003"
    assert migrate(engine) == "0003"
    engine.dispose()
    b = Billing.open(catalog, data_dir=tmp_path, progress_interval_s=0)
    assert [k.key_id for k in b.list_keys()] == [key.key_id]
    b.close()


def test_open_creates_a_private_data_dir_and_a_wal_sqlite_ledger(tmp_path: Path, catalog):
    data_dir = tmp_path / "nested" / "data"
    b = Billing.open(catalog, data_dir=data_dir, progress_interval_s=0)
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    assert (data_dir / "ledger.db").exists()
    with b.engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
    b.close()


def test_default_data_dir_follows_the_environment(monkeypatch, tmp_path: Path):
    from tokenfactory.billing import default_data_dir

    monkeypatch.setenv("TOKENFACTORY_DATA_DIR", str(tmp_path / "d"))
    assert default_data_dir() == tmp_path / "d"
    monkeypatch.delenv("TOKENFACTORY_DATA_DIR")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_data_dir() == tmp_path / ".local" / "share" / "tokenfactory"


def test_postgres_urls_use_psycopg3_when_psycopg2_is_absent():
    assert normalize_url("postgres://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalize_url("postgresql+psycopg://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalize_url("sqlite:///x.db") == "sqlite:///x.db"


def _upgrade_to(engine, revision: str) -> None:
    from alembic import command
    from alembic.config import Config

    from tokenfactory.billing.db import migrations_dir

    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    cfg.set_main_option("path_separator", "os")
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def test_upgrading_from_0001_keeps_rows_and_adds_task_columns(tmp_path: Path, catalog):
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    engine = make_engine(url)
    _upgrade_to(engine, "0001")
    now = "2026-11-30 12:00:00"
    with engine.begin() as conn:
        conn.execute(text(
            "insert into api_keys (key_id, prefix, key_hash, name, account, tier, created_at) "
            f"values ('key_1', 'tf-abc', 'h1', 'old', 'acme', 'high', '{now}')"
        ))
        conn.execute(text(
            "insert into ledger (request_id, created_at, finished_at, account, key_id, model, "
            "tier_requested, tier_delivered, prompt_tokens, cached_tokens, completion_tokens, "
            "input_price, cached_input_price, output_price, amount_micro_usd, finish_reason, "
            f"client_disconnected, status) values ('old-1', '{now}', '{now}', 'acme', 'key_1', "
            "'m', 'high', 'high', 10, 0, 10, 1, 1, 1, 77, 'stop', 0, 'settled')"
        ))
        conn.execute(text(
            "insert into reservations (request_id, key_id, account, model, tier_requested, "
            "tier_so_far, reserved_micro_usd, reserved_tokens, input_price, cached_input_price, "
            "output_price, prompt_tokens, cached_tokens, completion_tokens, created_at, "
            f"updated_at) values ('open-1', 'key_1', 'acme', 'm', 'high', 'high', 500, 20, 1, 1,"
            f" 1, 0, 0, 0, '{now}', '{now}')"
        ))
    assert migrate(engine) == "0003"
    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
        assert conn.execute(text("select task_id, amount_micro_usd from ledger")).one() == (
            None, 77)
        assert conn.execute(text("select task_id from reservations")).scalar() is None
        assert conn.execute(text("select task_budget_micro_usd from api_keys")).scalar() is None
    engine.dispose()
    b = Billing.open(catalog, url, tmp_path, progress_interval_s=0)
    key = b.find_key("key_1")
    assert key.task_budget_micro_usd is None
    assert b.open_reservations() == []  # held by no front: it predates them
    state = b.budget_state(key)  # the counters start from the ledger and the reservations
    assert (state.spent_micro_usd, state.reserved_micro_usd) == (77, 500)
    assert [(r.task_id, r.amount_micro_usd) for r in b.usage(by="task")] == [(None, 77)]
    assert b.reconcile_open_reservations() == 1
    assert b.budget_state(key).reserved_micro_usd == 0
    b.close()
