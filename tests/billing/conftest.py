"""Billing over throwaway SQLite databases: no model, no server."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from tokenfactory.billing import Billing
from tokenfactory.billing.db import make_engine
from tokenfactory.tiers import TierCatalog, load_tiers


class FakeClock:
    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


@pytest.fixture
def catalog() -> TierCatalog:
    return load_tiers(None, "cpu")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def billing(catalog: TierCatalog, data_dir: Path, clock: FakeClock) -> Iterator[Billing]:
    b = Billing.open(catalog, data_dir=data_dir, clock=clock, progress_interval_s=0)
    yield b
    b.close()


def settle_simple(billing, res, tier, *, prompt=0, cached=0, completion=0, reason="stop", **kw):
    """Settle with the timing fields filled in."""
    return billing.settle(
        res,
        tier_delivered=tier,
        prompt_tokens=prompt,
        cached_tokens=cached,
        completion_tokens=completion,
        finish_reason=reason,
        queue_time_s=kw.pop("queue_time_s", 0.01),
        ttft_s=kw.pop("ttft_s", 0.2),
        decode_tokens_per_s=kw.pop("decode_tokens_per_s", 30.0),
        client_disconnected=kw.pop("client_disconnected", False),
        **kw,
    )


PG_URL = os.environ.get("TOKENFACTORY_TEST_POSTGRES_URL")


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A throwaway schema on the PostgreSQL of TOKENFACTORY_TEST_POSTGRES_URL (e.g.
    postgresql://postgres@127.0.0.1:5432/postgres), dropped after the test."""
    if not PG_URL:
        pytest.skip("set TOKENFACTORY_TEST_POSTGRES_URL to run the PostgreSQL tests")
    pytest.importorskip("psycopg", reason="pip install 'tokenfactory[postgres]'")
    schema = f"tf_test_{secrets.token_hex(4)}"
    admin = make_engine(PG_URL)
    with admin.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    sep = "&" if "?" in PG_URL else "?"
    yield f"{PG_URL}{sep}options=-csearch_path%3D{schema}"
    with admin.begin() as conn:
        conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
    admin.dispose()
