"""Several fronts on one database: budgets held exactly, reservations of a front that is gone
reconciled once, on SQLite (the counters and leases) and on a real PostgreSQL (concurrency,
shared rate limits, kill -9, a database restart)."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta

import pytest
from sqlalchemy import func, select

from tokenfactory.billing import (
    Billing,
    InsufficientQuotaError,
    LedgerUnavailableError,
    RateLimitExceededError,
)
from tokenfactory.billing.db import FrontRow, LedgerRow, utcnow

from .conftest import FakeClock, settle_simple


class WallClock:
    """A naive-UTC wall clock tests move forward (leases, heartbeats)."""

    def __init__(self) -> None:
        self.now = utcnow()

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def ledger_sum(b: Billing, key_id: str) -> tuple[int, int]:
    with b.engine.connect() as conn:
        n, total = conn.execute(
            select(func.count(), func.coalesce(func.sum(LedgerRow.amount_micro_usd), 0)).where(
                LedgerRow.key_id == key_id
            )
        ).one()
    return int(n), int(total)


def crash(b: Billing) -> None:
    """Lose a front's memory without settling or leaving the fronts table (kill -9)."""
    b._stop.set()
    b.engine.dispose()


# ---- SQLite: the same counters and leases, one process ------------------------------------


def test_two_fronts_on_one_sqlite_file_share_the_budget(catalog, data_dir):
    a = Billing.open(catalog, data_dir=data_dir, progress_interval_s=0)
    b = Billing.open(catalog, data_dir=data_dir, progress_interval_s=0)
    tier = catalog["high"]
    one = tier.cost_micro_usd(100, 0, 100)
    key, _ = a.create_key("k", "high", budget_micro_usd=3 * one)
    held = [a.admit(key, request_id="a1", model="m", tier=tier, prompt_tokens=100,
                    max_completion_tokens=100)]
    held.append(b.admit(key, request_id="b1", model="m", tier=tier, prompt_tokens=100,
                        max_completion_tokens=100))
    held.append(a.admit(key, request_id="a2", model="m", tier=tier, prompt_tokens=100,
                        max_completion_tokens=100))
    with pytest.raises(InsufficientQuotaError):
        b.admit(key, request_id="b2", model="m", tier=tier, prompt_tokens=100,
                max_completion_tokens=100)
    assert b.budget_state(key).reserved_micro_usd == 3 * one
    settle_simple(b, held[0], tier, prompt=100, completion=10)  # settled by the other front
    assert b.budget_state(key).spent_micro_usd == tier.cost_micro_usd(100, 0, 10)
    b.admit(key, request_id="b2", model="m", tier=tier, prompt_tokens=100,
            max_completion_tokens=50)
    a.close()
    b.close()


def test_a_live_front_reconciles_a_silent_one_once_connected_for_a_lease(catalog, data_dir):
    wall = WallClock()
    opts = {"progress_interval_s": 0, "wall_clock": wall, "lease_s": 30}
    dead = Billing.open(catalog, data_dir=data_dir, **opts)
    key, _ = dead.create_key("k", "high", budget_micro_usd=10_000_000)
    res = dead.admit(key, request_id="lost", model="m", tier=catalog["high"],
                     prompt_tokens=40, max_completion_tokens=400)
    dead.record_progress(res, prompt_tokens=40, cached_tokens=0, completion_tokens=9,
                         tier_so_far="high")
    dead.flush_progress()
    crash(dead)
    live = Billing.open(catalog, data_dir=data_dir, **opts)
    live.upkeep()
    assert live.get_entry("lost") is None  # its heartbeat is fresh: it may be alive
    wall.advance(31)
    live._connected_since = None  # as the upkeep thread records an outage of the database
    live._next_heartbeat = 0
    live.upkeep()  # every heartbeat is old after an outage: wait a lease before judging
    assert live.get_entry("lost") is None
    wall.advance(31)
    live._next_heartbeat = 0
    live.upkeep()  # connected for a whole lease, and still no heartbeat from the other
    entry = live.get_entry("lost")
    assert entry is not None and entry.status == "reconciled"
    assert entry.completion_tokens == 9
    assert live.budget_state(key).reserved_micro_usd == 0
    assert live.budget_state(key).spent_micro_usd == entry.amount_micro_usd
    with live.engine.connect() as conn:  # the gone front's row is forgotten, the live one's kept
        assert [r[0] for r in conn.execute(select(FrontRow.front_id))] == [live.front.front_id]
    assert live.reconcile_open_reservations() == 0
    live.close()


def test_silent_fronts_that_hold_nothing_are_forgotten_and_closed_ones_leave(catalog, data_dir):
    wall = WallClock()
    opts = {"progress_interval_s": 0, "wall_clock": wall}
    crash(Billing.open(catalog, data_dir=data_dir, **opts))  # a tool killed before it closed
    Billing.open(catalog, data_dir=data_dir, **opts).close()
    live = Billing.open(catalog, data_dir=data_dir, **opts)

    def front_ids() -> int:
        with live.engine.connect() as conn:
            return len(conn.execute(select(FrontRow.front_id)).all())

    assert front_ids() == 2  # the crashed one and this one; the closed one left
    live.reconcile_open_reservations()
    assert front_ids() == 2  # silent, but not for a whole lease yet
    wall.advance(31)
    live.reconcile_open_reservations()
    assert front_ids() == 1
    live.close()


def test_a_front_whose_request_was_reconciled_meanwhile_bills_nothing_more(catalog, data_dir):
    wall = WallClock()
    slow = Billing.open(catalog, data_dir=data_dir, progress_interval_s=0, wall_clock=wall)
    key, _ = slow.create_key("k", "high")
    res = slow.admit(key, request_id="r", model="m", tier=catalog["high"], prompt_tokens=10,
                     max_completion_tokens=100)
    wall.advance(120)  # it stopped heartbeating (paused, cut off): the others take it for dead
    other = Billing.open(catalog, data_dir=data_dir, progress_interval_s=0, wall_clock=wall)
    assert other.reconcile_open_reservations() == 1
    late = settle_simple(slow, res, catalog["high"], prompt=10, completion=50)
    assert late.status == "reconciled"  # the row already there; nothing billed twice
    assert ledger_sum(other, key.key_id) == (1, late.amount_micro_usd)
    assert other.budget_state(key).reserved_micro_usd == 0
    slow.close()
    other.close()


# ---- PostgreSQL ---------------------------------------------------------------------------

pg = pytest.mark.integration


@pg
def test_two_fronts_100_concurrent_reservations_never_overspend(pg_url, catalog, data_dir):
    fronts = [Billing.open(catalog, pg_url, data_dir, progress_interval_s=0) for _ in range(2)]
    tier = catalog["high"]
    worst = tier.cost_micro_usd(200, 0, 200)
    budget = 12 * worst + worst // 2  # room for a dozen worst cases
    key, _ = fronts[0].create_key("k", "high", budget_micro_usd=budget)
    billed: list[int] = []
    lock = threading.Lock()

    def one(i: int) -> str:
        front = fronts[i % 2]
        try:
            res = front.admit(key, request_id=f"r{i}", model="m", tier=tier, prompt_tokens=200,
                              max_completion_tokens=200)
        except InsufficientQuotaError:
            return "refused"
        time.sleep(0.001 * (i % 5))
        entry = settle_simple(front, res, tier, prompt=200, completion=50 + i % 150)
        with lock:
            billed.append(entry.amount_micro_usd)
        return "billed"

    with ThreadPoolExecutor(32) as pool:
        outcomes = list(pool.map(one, range(100)))
    assert outcomes.count("billed") >= 12 and "refused" in outcomes
    n, total = ledger_sum(fronts[0], key.key_id)
    assert (n, total) == (len(billed), sum(billed))  # the ledger is what the clients were told
    assert total <= budget  # holds are worst cases: spend never passes the budget
    for front in fronts:
        state = front.budget_state(key)
        assert (state.spent_micro_usd, state.reserved_micro_usd) == (total, 0)
        front.close()


@pg
def test_rate_limits_are_shared_by_the_fronts(pg_url, catalog, data_dir):
    clock = FakeClock()
    fronts = [
        Billing.open(catalog, pg_url, data_dir, progress_interval_s=0, clock=clock)
        for _ in range(2)
    ]
    key, _ = fronts[0].create_key("k", "high", rpm=10)

    def one(i: int) -> bool:
        try:
            fronts[i % 2].admit(key, request_id=f"r{i}", model="m", tier=catalog["high"],
                                prompt_tokens=1, max_completion_tokens=1)
        except RateLimitExceededError:
            return False
        return True

    with ThreadPoolExecutor(8) as pool:
        assert sum(pool.map(one, range(30))) == 10  # one bucket of 10, not 10 per front
    with pytest.raises(RateLimitExceededError) as refused:
        fronts[1].admit(key, request_id="over", model="m", tier=catalog["high"],
                        prompt_tokens=1, max_completion_tokens=1)
    assert refused.value.headers["x-ratelimit-remaining-requests"] == "0"
    clock.advance(6)  # 10 per minute: one more after 6 s, from either front
    assert one(31) and not one(32)
    for front in fronts:
        front.close()


@pg
def test_fronts_starting_together_on_a_fresh_database_migrate_it_once(pg_url, catalog, data_dir):
    from tokenfactory.billing.db import make_engine, migrate

    engines = [make_engine(pg_url) for _ in range(4)]
    barrier = threading.Barrier(len(engines))

    def start(engine) -> str | None:
        barrier.wait()
        return migrate(engine)

    with ThreadPoolExecutor(len(engines)) as pool:
        heads = list(pool.map(start, engines))
    assert len(set(heads)) == 1 and heads[0] is not None
    for engine in engines:
        engine.dispose()


CRASHING_FRONT = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from tokenfactory.billing import Billing
    from tokenfactory.tiers import load_tiers

    catalog = load_tiers(None, "cpu")
    b = Billing.open(catalog, sys.argv[1], Path(sys.argv[2]), progress_interval_s=0)
    key = b.find_key(sys.argv[3])
    for i in range(5):
        res = b.admit(key, request_id=f"doomed-{i}", model="m", tier=catalog["high"],
                      prompt_tokens=50, max_completion_tokens=500)
        b.record_progress(res, prompt_tokens=50, cached_tokens=0, completion_tokens=10 + i,
                          tier_so_far="high")
    b.flush_progress()  # what the background thread does about once a second
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


@pg
def test_a_front_killed_9_is_reconciled_once_by_two_fronts_starting_together(
    pg_url, catalog, data_dir, tmp_path
):
    setup = Billing.open(catalog, pg_url, data_dir, progress_interval_s=0)
    key, _ = setup.create_key("k", "high", budget_micro_usd=10_000_000)
    script = tmp_path / "front.py"
    script.write_text(CRASHING_FRONT)
    proc = subprocess.run(
        [sys.executable, str(script), pg_url, str(data_dir), key.key_id],
        capture_output=True, text=True, timeout=120, env=os.environ.copy(),
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert setup.budget_state(key).reserved_micro_usd > 0
    starting = [Billing.open(catalog, pg_url, data_dir, progress_interval_s=0)
                for _ in range(2)]
    barrier = threading.Barrier(2)

    def start(b: Billing) -> int:
        barrier.wait()
        return b.reconcile_open_reservations()

    with ThreadPoolExecutor(2) as pool:
        counts = list(pool.map(start, starting))
    assert sum(counts) == 5  # each reservation once, whichever front got it
    entries = [setup.get_entry(f"doomed-{i}") for i in range(5)]
    assert [e.completion_tokens for e in entries if e] == [10, 11, 12, 13, 14]
    n, total = ledger_sum(setup, key.key_id)
    assert n == 5 and total == sum(e.amount_micro_usd for e in entries if e)
    state = setup.budget_state(key)
    assert (state.spent_micro_usd, state.reserved_micro_usd) == (total, 0)
    for b in [*starting, setup]:
        b.close()


CTL = os.environ.get("TOKENFACTORY_TEST_POSTGRES_CTL")


@pg
@pytest.mark.skipif(
    not CTL,
    reason="set TOKENFACTORY_TEST_POSTGRES_CTL to a command that stops and starts the test "
    "PostgreSQL with 'stop'/'start' appended (e.g. 'pg_ctlcluster 15 main'; `make "
    "test-postgres` does)",
)
def test_a_database_restart_refuses_with_503_then_recovers_losing_nothing(
    pg_url, catalog, data_dir
):
    assert CTL is not None
    b = Billing.open(catalog, pg_url, data_dir, progress_interval_s=0)
    key, raw = b.create_key("k", "high", budget_micro_usd=10_000_000)
    tier = catalog["high"]
    before = b.admit(key, request_id="before", model="m", tier=tier, prompt_tokens=10,
                     max_completion_tokens=100)
    told: dict[str, int] = {}
    subprocess.run([*shlex.split(CTL), "stop"], check=True, timeout=60)
    try:
        with pytest.raises(LedgerUnavailableError) as refused:
            b.admit(key, request_id="during", model="m", tier=tier, prompt_tokens=10,
                    max_completion_tokens=100)
        assert refused.value.status_code == 503 and refused.value.headers["retry-after"]
        # finishing while the database is gone: kept here, written when it is back
        told["before"] = settle_simple(b, before, tier, prompt=10, completion=60).amount_micro_usd
        with pytest.raises(LedgerUnavailableError):
            b.write_unwritten()
    finally:
        subprocess.run([*shlex.split(CTL), "start"], check=True, timeout=60)
    deadline = time.monotonic() + 30
    while True:  # recovers by itself: a fresh connection once the server answers
        try:
            b.upkeep()
            break
        except LedgerUnavailableError:
            assert time.monotonic() < deadline, "the ledger did not come back"
            time.sleep(0.5)
    after = b.admit(key, request_id="after", model="m", tier=tier, prompt_tokens=10,
                    max_completion_tokens=100)
    told["after"] = settle_simple(b, after, tier, prompt=10, completion=5).amount_micro_usd
    assert b.get_entry("during") is None
    assert ledger_sum(b, key.key_id) == (2, sum(told.values()))
    state = b.budget_state(key)
    assert (state.spent_micro_usd, state.reserved_micro_usd) == (sum(told.values()), 0)
    assert b.authenticate(raw).key_id == key.key_id
    b.close()


def test_an_unreachable_ledger_is_a_503_in_openai_shape_with_retry_after():
    from tokenfactory.server import errors

    exc = LedgerUnavailableError(retry_after_s=2.0)
    api = errors.ledger_unavailable(exc.message, exc.retry_after_s)
    assert api.status == 503 and api.headers == {"retry-after": "2"}
    assert api.body()["error"]["type"] == "server_error"
    assert api.body()["error"]["code"] == "ledger_unavailable"
    assert "Nothing was billed" in api.body()["error"]["message"]
