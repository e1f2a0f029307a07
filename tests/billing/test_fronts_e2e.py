"""Two real `tokenfactory serve` fronts on one PostgreSQL ledger, with the embedded model:
concurrent requests on a tight budget, a front killed with -9 while it streams, and (when the
test may stop the database) a database restart. Needs TOKENFACTORY_TEST_POSTGRES_URL."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from tests.server.conftest import MODEL, ServerProcess, start_server
from tokenfactory.bench.local_factory import open_tiers_toml
from tokenfactory.billing import Billing
from tokenfactory.billing.db import LedgerRow, make_engine, table
from tokenfactory.billing.ledger import max_cost
from tokenfactory.tiers import load_tiers

pytestmark = pytest.mark.e2e

MSG = [{"role": "user", "content": "Count from one to twenty in words."}]
LONG = [{"role": "user", "content": "Write a very long story about a lighthouse keeper."}]


def ledger(pg_url: str, key_id: str) -> dict[str, dict]:
    engine = make_engine(pg_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                select(table(LedgerRow)).where(LedgerRow.key_id == key_id)
            ).mappings().all()
    finally:
        engine.dispose()
    return {r["request_id"]: dict(r) for r in rows}


@pytest.fixture
def two_fronts(pg_url: str, tmp_path: Path) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    fronts: list[ServerProcess] = []
    try:
        for name in ("front-a", "front-b"):
            fronts.append(start_server(tmp_path / name, "--database-url", pg_url))
        yield fronts[0], fronts[1]
    finally:
        for front in fronts:
            front.stop()


def chat(front: ServerProcess, key: str, max_tokens: int) -> httpx.Response:
    return httpx.post(
        front.base_url + "/v1/chat/completions",
        json={"model": MODEL, "messages": MSG, "max_tokens": max_tokens, "temperature": 0},
        headers={"Authorization": f"Bearer {key}"},
        timeout=120,
    )


def test_two_fronts_share_a_budget_and_a_killed_front_is_reconciled_by_the_other(
    pg_url: str, two_fronts, tmp_path: Path
):
    a, b = two_fronts
    tiers = tmp_path / "tiers.toml"
    tiers.write_text(open_tiers_toml())
    catalog = load_tiers(tiers)
    worst = max_cost(catalog["high"], 60, 16)  # about the prompt's length after the template
    with Billing.open(catalog, pg_url, tmp_path / "admin", progress_interval_s=0) as admin:
        key, raw = admin.create_key("shared", "high", budget_micro_usd=5 * worst)

    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(lambda i: chat((a, b)[i % 2], raw, 16), range(24)))
    ok = [r.json() for r in answers if r.status_code == 200]
    refused = [r.json() for r in answers if r.status_code == 429]
    assert len(ok) + len(refused) == len(answers)
    assert ok and refused
    assert {e["error"]["code"] for e in refused} == {"insufficient_quota"}
    rows = ledger(pg_url, key.key_id)
    assert sorted(rows) == sorted(r["id"] for r in ok)  # one row per answer, no other
    assert sum(r["completion_tokens"] for r in rows.values()) == sum(
        r["usage"]["completion_tokens"] for r in ok)
    assert sum(r["prompt_tokens"] for r in rows.values()) == sum(
        r["usage"]["prompt_tokens"] for r in ok)
    assert sum(r["amount_micro_usd"] for r in rows.values()) <= 5 * worst

    # a front killed with -9 in the middle of a stream: the other bills it, once
    with Billing.open(catalog, pg_url, tmp_path / "admin", progress_interval_s=0) as admin:
        big, big_raw = admin.create_key("streamer", "high")
    with httpx.stream(
        "POST", a.base_url + "/v1/chat/completions",
        json={"model": MODEL, "messages": LONG, "max_tokens": 1000, "stream": True,
              "temperature": 0},
        headers={"Authorization": f"Bearer {big_raw}"}, timeout=120,
    ) as stream:
        lines = stream.iter_lines()
        first = next(line for line in lines if line.startswith("data: {"))
        request_id = httpx.Response(200, content=first[6:]).json()["id"]
        for _, _line in zip(range(5), lines, strict=False):
            pass
        time.sleep(1.5)  # progress reaches the reservation row about once a second
        a.stop(signal.SIGKILL)
    deadline = time.monotonic() + 60  # b looks for gone fronts every 10 s
    while not (rows := ledger(pg_url, big.key_id)) and time.monotonic() < deadline:
        time.sleep(1)
    assert list(rows) == [request_id]
    row = rows[request_id]
    assert row["status"] == "reconciled" and row["finish_reason"] == "interrupted"
    assert row["completion_tokens"] > 0
    assert chat(b, raw, 4).status_code in (200, 429)  # the survivor still serves
    time.sleep(2)
    assert list(ledger(pg_url, big.key_id)) == [request_id]  # reconciled once


CTL = os.environ.get("TOKENFACTORY_TEST_POSTGRES_CTL")


@pytest.mark.skipif(
    not CTL, reason="set TOKENFACTORY_TEST_POSTGRES_CTL (e.g. 'pg_ctlcluster 15 main') to let "
    "the test stop and start the database"
)
def test_a_front_answers_503_while_the_database_is_down_and_recovers(pg_url, tmp_path):
    assert CTL is not None
    front = start_server(tmp_path / "front", "--database-url", pg_url)
    try:
        tiers = tmp_path / "tiers.toml"
        tiers.write_text(open_tiers_toml())
        with Billing.open(load_tiers(tiers), pg_url, tmp_path / "admin",
                          progress_interval_s=0) as admin:
            key, raw = admin.create_key("k", "high")
        assert chat(front, raw, 4).status_code == 200
        time.sleep(6)  # past the key cache: authentication needs the database again
        subprocess.run([*shlex.split(CTL), "stop"], check=True, timeout=60)
        try:
            down = chat(front, raw, 4)
            assert down.status_code == 503, down.text
            assert down.json()["error"]["code"] == "ledger_unavailable"
            assert int(down.headers["retry-after"]) >= 1
        finally:
            subprocess.run([*shlex.split(CTL), "start"], check=True, timeout=60)
        deadline = time.monotonic() + 30
        while (up := chat(front, raw, 4)).status_code == 503 and time.monotonic() < deadline:
            time.sleep(1)
        assert up.status_code == 200, up.text
        rows = ledger(pg_url, key.key_id)
        assert len(rows) == 2 and all(r["status"] == "settled" for r in rows.values())
    finally:
        front.stop()
