"""The billing database: tables (SQLAlchemy 2), the engine (SQLite in WAL mode by default, any
SQLAlchemy URL otherwise) and migrations to head with the Alembic scripts shipped in the package.

Timestamps are stored as naive UTC datetimes and handed out as aware UTC ones; money is integer
micro-dollars (BigInteger).
"""

from __future__ import annotations

from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import cast

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    Index,
    Integer,
    String,
    Table,
    create_engine,
    event,
    text,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# BigInteger everywhere but SQLite, where only INTEGER PRIMARY KEY autoincrements.
BigId = BigInteger().with_variant(Integer, "sqlite")


class Base(DeclarativeBase):
    pass


def table(model: type[Base]) -> Table:
    """A mapped class's table, for Core statements (typed: `__table__` is any FromClause)."""
    return cast(Table, model.__table__)


class Meta(Base):
    """Small facts about this database (e.g. when the local keys were bootstrapped)."""

    __tablename__ = "billing_meta"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(256))


class KeyRow(Base):
    __tablename__ = "api_keys"
    key_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    prefix: Mapped[str] = mapped_column(String(16), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)  # sha256 hex, never the key
    name: Mapped[str] = mapped_column(String(128))
    account: Mapped[str] = mapped_column(String(128), index=True)
    tier: Mapped[str] = mapped_column(String(64))
    rpm: Mapped[int | None] = mapped_column(Integer)
    tpm: Mapped[int | None] = mapped_column(BigInteger)
    budget_micro_usd: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime)
    # the most one task id may spend with this key (requests without a task id: unlimited)
    task_budget_micro_usd: Mapped[int | None] = mapped_column(BigInteger)


class ReservationRow(Base):
    """One admitted request not yet settled; its progress is written about once a second."""

    __tablename__ = "reservations"
    request_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    key_id: Mapped[str] = mapped_column(String(32), index=True)
    account: Mapped[str] = mapped_column(String(128))
    model: Mapped[str] = mapped_column(String(256))
    tier_requested: Mapped[str] = mapped_column(String(64))
    tier_so_far: Mapped[str] = mapped_column(String(64))
    reserved_micro_usd: Mapped[int] = mapped_column(BigInteger)
    reserved_tokens: Mapped[int] = mapped_column(BigInteger)
    # prices of the requested tier at admission (micro-USD per million tokens)
    input_price: Mapped[int] = mapped_column(BigInteger)
    cached_input_price: Mapped[int] = mapped_column(BigInteger)
    output_price: Mapped[int] = mapped_column(BigInteger)
    prompt_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cached_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    completion_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    updated_at: Mapped[datetime] = mapped_column(DateTime)
    task_id: Mapped[str | None] = mapped_column(String(128))
    # the front (server process) that admitted it; NULL for rows written before fronts existed
    front_id: Mapped[str | None] = mapped_column(String(96), index=True)


class FrontRow(Base):
    """One server process admitting requests on this database, alive while it heartbeats."""

    __tablename__ = "fronts"
    front_id: Mapped[str] = mapped_column(String(96), primary_key=True)
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(DateTime)
    heartbeat_at: Mapped[datetime] = mapped_column(DateTime)


class MoneyRow(Base):
    """What a key (task_id "") or one task id of a key has spent and holds: the counters every
    front reserves against with one conditional UPDATE, changed in the same transaction as the
    reservation or ledger row that moves them."""

    __tablename__ = "money"
    key_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    task_id: Mapped[str] = mapped_column(String(128), primary_key=True)  # "" = the whole key
    spent_micro_usd: Mapped[int] = mapped_column(BigInteger)
    reserved_micro_usd: Mapped[int] = mapped_column(BigInteger)


class RateBucketRow(Base):
    """A key's rate-limit buckets when they are shared through the database (PostgreSQL)."""

    __tablename__ = "rate_buckets"
    key_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    requests_level: Mapped[float] = mapped_column(Float)
    tokens_level: Mapped[float] = mapped_column(Float)
    updated: Mapped[float] = mapped_column(Float)  # wall-clock seconds (epoch) of the refill


class LedgerRow(Base):
    """One row per request, ever: what was delivered and what it cost."""

    __tablename__ = "ledger"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(String(128), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    finished_at: Mapped[datetime] = mapped_column(DateTime)
    account: Mapped[str] = mapped_column(String(128))
    key_id: Mapped[str] = mapped_column(String(32))
    model: Mapped[str] = mapped_column(String(256))
    tier_requested: Mapped[str] = mapped_column(String(64))
    tier_delivered: Mapped[str] = mapped_column(String(64))
    prompt_tokens: Mapped[int] = mapped_column(BigInteger)
    cached_tokens: Mapped[int] = mapped_column(BigInteger)
    completion_tokens: Mapped[int] = mapped_column(BigInteger)
    input_price: Mapped[int] = mapped_column(BigInteger)
    cached_input_price: Mapped[int] = mapped_column(BigInteger)
    output_price: Mapped[int] = mapped_column(BigInteger)
    amount_micro_usd: Mapped[int] = mapped_column(BigInteger)
    queue_time_s: Mapped[float | None] = mapped_column(Float)
    ttft_s: Mapped[float | None] = mapped_column(Float)
    decode_tokens_per_s: Mapped[float | None] = mapped_column(Float)
    finish_reason: Mapped[str] = mapped_column(String(32))
    client_disconnected: Mapped[bool] = mapped_column(Boolean)
    error: Mapped[str | None] = mapped_column(String(1024))
    status: Mapped[str] = mapped_column(String(16))  # "settled" | "reconciled"
    task_id: Mapped[str | None] = mapped_column(String(128))  # the caller's task, if it sent one

    __table_args__ = (
        Index("ix_ledger_account_finished", "account", "finished_at"),
        Index("ix_ledger_key_finished", "key_id", "finished_at"),
        Index("ix_ledger_key_task", "key_id", "task_id"),
    )


def utcnow() -> datetime:
    """Now in UTC, naive, as stored."""
    return datetime.now(UTC).replace(tzinfo=None)


def as_utc(value: datetime | None) -> datetime | None:
    """A stored naive UTC datetime as an aware one."""
    return None if value is None else value.replace(tzinfo=UTC)


def to_storage(value: datetime) -> datetime:
    """An aware datetime (or a naive one taken as UTC) as stored: naive UTC."""
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value


def make_engine(url: str) -> Engine:
    """An engine for `url`; SQLite files get WAL, a busy timeout and threads allowed."""
    if url.startswith("sqlite"):
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 30}, pool_pre_ping=False
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record) -> None:
            cur = dbapi_connection.cursor()
            if ":memory:" not in url and url not in ("sqlite://", "sqlite:///"):
                cur.execute("PRAGMA journal_mode=WAL")
            # WAL + NORMAL survives a process crash (kill -9); only power loss can drop the
            # last transactions.
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    # pre-ping: a connection the database dropped (a restart) is replaced at checkout, so
    # the first request after the database comes back succeeds. connect_timeout bounds how
    # long a request waits for a database that is gone before it is refused with a 503.
    url = normalize_url(url)
    connect_args = {"connect_timeout": 5} if url.startswith("postgresql") else {}
    return create_engine(url, pool_pre_ping=True, connect_args=connect_args)


def normalize_url(url: str) -> str:
    """postgres:// and postgresql:// use psycopg 3 (the `postgres` extra) unless psycopg2 is
    installed, since SQLAlchemy's default PostgreSQL driver is psycopg2."""
    scheme, sep, rest = url.partition("://")
    if sep and scheme in ("postgres", "postgresql"):
        import importlib.util

        if scheme == "postgres" or importlib.util.find_spec("psycopg2") is None:
            return f"postgresql+psycopg://{rest}"
    return url


def migrations_dir() -> Path:
    return Path(str(resources.files("tokenfactory.billing").joinpath("migrations")))


def migrate(engine: Engine) -> str | None:
    """Bring the schema to head (safe on an existing, current database); returns the revision."""
    from alembic import command
    from alembic.config import Config
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    cfg.set_main_option("path_separator", "os")
    head = ScriptDirectory.from_config(cfg).get_current_head()
    with engine.connect() as conn:
        if MigrationContext.configure(conn).get_current_revision() == head:
            return head
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            # fronts starting together: one migrates, the others wait here, then find head
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK})
            if MigrationContext.configure(conn).get_current_revision() == head:
                return head
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
    return head


_MIGRATION_LOCK = 0x7466_6C65_6467  # an advisory lock id of the ledger's own
