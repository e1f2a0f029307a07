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
    assert head == "0001"
    tables = set(inspect(engine).get_table_names())
    assert {"api_keys", "reservations", "ledger", "billing_meta", "alembic_version"} <= tables
    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
        assert conn.execute(text("select version_num from alembic_version")).scalar() == "0001"
    engine.dispose()


def test_migrating_twice_is_harmless_and_keeps_data(tmp_path: Path, catalog):
    b = Billing.open(catalog, data_dir=tmp_path, progress_interval_s=0)
    key, _ = b.create_key("k", "standard")
    b.close()
    engine = make_engine(f"sqlite:///{tmp_path / 'ledger.db'}")
    assert migrate(engine) == "0001"
    assert migrate(engine) == "0001"
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
