"""A chaos run: two real fronts on one PostgreSQL ledger, front A serving through two engine
replicas on Ray (`--replicas 2 --threads 1`), front B with its own engine. Under load on a
tight budget, one of A's replicas is killed, B is killed with -9 and started again, and the
database is restarted. Then the ledger is held against what every client was told: nothing
lost, nothing billed twice, every reservation closed, the budget kept.

It lives with the billing tests, not the fleet's: what it checks is the ledger, it needs their
throwaway PostgreSQL schema (the `pg_url` fixture of this directory), and `make test-postgres`
runs it. Needs TOKENFACTORY_TEST_POSTGRES_URL, TOKENFACTORY_TEST_POSTGRES_CTL and Ray (the
fleet extra); skips with the reason when one is missing.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from tests.fleet.replica_metrics import replica_pids, replica_series
from tests.server.conftest import MODEL, ServerProcess, start_server
from tokenfactory.bench.local_factory import open_tiers_toml
from tokenfactory.billing import Billing, LedgerUnavailableError
from tokenfactory.billing.db import LedgerRow, ReservationRow, make_engine, table
from tokenfactory.billing.ledger import max_cost
from tokenfactory.tiers import load_tiers

pytest.importorskip("ray", reason="the fleet front needs Ray: pip install 'tokenfactory[fleet]'")
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

CTL = os.environ.get("TOKENFACTORY_TEST_POSTGRES_CTL")
CLIENTS = 8  # half stream, half take whole answers
STREAM_TOKENS, WHOLE_TOKENS = 128, 12  # streams long enough to be cut mid-way
PROMPT_BOUND = 80  # more than any prompt here takes after the chat template
REFUSALS = {"insufficient_quota", "ledger_unavailable"}  # refused before anything ran


@dataclass
class Told:
    """What one client request was told. `ending`: answered (200 with usage: a whole body, or
    a stream that ended with usage and [DONE]), error_event (a stream that ended with an
    error event), refused (an error status with an OpenAI error body), cut (the connection
    broke once the request was sent), unreachable (no connection), hung (no word in time),
    truncated (a stream that ended with neither [DONE] nor an error)."""

    front: str
    stream: bool
    started: float
    ended: float = 0.0
    ending: str = "unreachable"
    status: int | None = None
    request_id: str | None = None
    code: str | None = None
    usage: dict | None = None
    tokens: int = 0  # completion tokens received (a stream's: its logprobs entries)


@dataclass
class Fronts:
    """The two fronts and the clients' view of them (B is replaced when it starts again)."""

    a: ServerProcess
    b: ServerProcess
    b_args: tuple[str, ...]
    lock: threading.Lock = field(default_factory=threading.Lock)
    # front -> {stream: when its first token came}, for the streams running now
    streaming: dict[str, dict[int, float]] = field(default_factory=lambda: {"a": {}, "b": {}})

    def url(self, name: str) -> str:
        with self.lock:
            return (self.a if name == "a" else self.b).base_url

    def streaming_on(self, name: str, for_s: float = 0.0) -> int:
        """How many streams on the front have been receiving tokens for `for_s` seconds."""
        now = time.monotonic()
        with self.lock:
            return sum(now - t >= for_s for t in self.streaming[name].values())


def ask(fronts: Fronts, name: str, key: str, stream: bool, content: str, cache_key: str) -> Told:
    """One chat completion, told as the client saw it."""
    body: dict = {
        "model": MODEL,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": STREAM_TOKENS if stream else WHOLE_TOKENS,
        "temperature": 0,
        "prompt_cache_key": cache_key,
    }
    if stream:  # logprobs: one entry per token, so the client counts what it received
        body |= {"stream": True, "stream_options": {"include_usage": True}, "logprobs": True}
    told = Told(name, stream, time.monotonic())
    counted = False
    try:
        with httpx.stream(
            "POST",
            fronts.url(name) + "/v1/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {key}"},
            timeout=httpx.Timeout(60, connect=5),
        ) as r:
            told.status = r.status_code
            if r.status_code != 200:
                r.read()
                error = r.json().get("error") or {}
                told.ending, told.code = "refused", error.get("code")
                if not set(error) >= {"message", "type", "param", "code"} or (
                    error["code"] == "ledger_unavailable"
                    and (r.status_code != 503 or int(r.headers["retry-after"]) < 1)
                ):
                    told.ending = f"malformed error: {r.status_code} {r.headers} {error}"
            elif not stream:
                answer = json.loads(r.read())
                told.request_id, told.usage = answer["id"], answer["usage"]
                told.tokens = answer["usage"]["completion_tokens"]
                told.ending = "answered"
            else:
                told.ending = "truncated"
                for line in r.iter_lines():
                    if not line.startswith("data: "):
                        continue
                    if line == "data: [DONE]":
                        told.ending = "answered" if told.usage else "truncated"
                        break
                    event = json.loads(line[6:])
                    if "error" in event:
                        told.ending, told.code = "error_event", event["error"]["code"]
                        continue
                    told.request_id = event["id"]
                    told.usage = event.get("usage") or told.usage
                    for choice in event["choices"]:
                        told.tokens += len((choice.get("logprobs") or {}).get("content") or [])
                    if told.tokens and not counted:
                        counted = True
                        with fronts.lock:
                            fronts.streaming[name][id(told)] = time.monotonic()
    except (httpx.ConnectError, httpx.ConnectTimeout):
        told.ending = "unreachable"
    except httpx.TimeoutException:
        told.ending = "hung"
    except httpx.TransportError:
        told.ending = "cut"
    finally:
        told.ended = time.monotonic()
        if counted:
            with fronts.lock:
                del fronts.streaming[name][id(told)]
    return told


class Clients:
    """CLIENTS threads asking in turn of front A and front B until stopped."""

    def __init__(self, fronts: Fronts, key: str):
        self.told: list[Told] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(fronts, key, i), daemon=True)
            for i in range(CLIENTS)
        ]

    def _run(self, fronts: Fronts, key: str, i: int) -> None:
        n = 0
        while not self._stop.is_set():
            front = "ab"[(i + n) % 2]
            content = f"Count from {n + i} to {n + i + 60} in words, one per line."
            try:
                told = ask(fronts, front, key, i % 2 == 0, content, f"client-{i}")
            except Exception as exc:  # said in the verdict, not lost in a thread
                told = Told(front, i % 2 == 0, time.monotonic(), ending=f"failed: {exc!r}")
            with self._lock:
                self.told.append(told)
            if told.ending != "answered":
                time.sleep(0.5)  # refused or unreachable: do not spin
            n += 1

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(90)
        assert not any(t.is_alive() for t in self._threads), "a client never came back"

    def wait_for(self, what: str, check: Callable[[list[Told]], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                told = list(self.told)
            if check(told):
                return
            assert time.monotonic() < deadline, f"no {what} within {timeout} s"
            time.sleep(0.1)


class Treasurer(threading.Thread):
    """Keeps the key's budget a few worst-case requests above what it has spent (a prepaid
    budget topped up as it goes), so the clients contend for its last dollars all along; each
    second it also checks that what is spent and reserved stays within the budget."""

    def __init__(self, admin: Billing, key_id: str, headroom: int):
        super().__init__(daemon=True)
        self.admin, self.key_id, self.headroom = admin, key_id, headroom
        self.budget = headroom
        self.over: list[tuple[int, int]] = []  # (committed, budget) seen above the budget
        self.samples = 0
        self.topping_up = True
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(1.0):
            try:
                key = self.admin.find_key(self.key_id)
                state = self.admin.budget_state(key)
            except LedgerUnavailableError:
                continue  # the database is down
            self.samples += 1
            if state.committed_micro_usd > self.budget:
                self.over.append((state.committed_micro_usd, self.budget))
            if not self.topping_up:
                continue
            wanted = state.spent_micro_usd + self.headroom
            if wanted <= self.budget:
                continue
            try:
                self.admin.update_key(self.key_id, budget_micro_usd=wanted)
            except LedgerUnavailableError:
                pass  # the database went down: a lost answer may still have committed it
            self.budget = wanted  # budgets are only raised: the higher one bounds both cases

    def stop(self) -> None:
        self._halt.set()
        self.join(30)


def wait_until(what: str, check: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.2)


def database(action: str) -> None:
    assert CTL is not None
    subprocess.run([*shlex.split(CTL), action], check=True, timeout=60)


def read_ledger(pg_url: str, key_id: str) -> tuple[list[dict], int]:
    """The key's ledger rows and how many reservations it still has open."""
    engine = make_engine(pg_url)
    try:
        with engine.connect() as conn:
            rows = (
                conn.execute(select(table(LedgerRow)).where(LedgerRow.key_id == key_id))
                .mappings()
                .all()
            )
            held = conn.execute(
                select(func.count()).where(ReservationRow.key_id == key_id)
            ).scalar_one()
    finally:
        engine.dispose()
    return [dict(r) for r in rows], int(held)


@pytest.fixture
def fronts(pg_url: str, tmp_path: Path) -> Iterator[Fronts]:
    args_a = ("--replicas", "2", "--threads", "1", "--database-url", pg_url)
    args_b = ("--threads", "1", "--database-url", pg_url)
    a = start_server(tmp_path / "front-a", *args_a, timeout=300)
    try:  # one after the other: on a small machine two model loads at once take longer
        b = start_server(tmp_path / "front-b", *args_b)
    except BaseException:
        a.stop()
        raise
    pair = Fronts(a, b, args_b)
    try:
        yield pair
    finally:
        pair.b.stop()
        pair.a.stop()


@dataclass
class Timeline:
    """When each fault happened (time.monotonic()), and which replica was killed."""

    victim: str = ""
    b_killed: float = 0.0
    b_back: float = 0.0
    db_down: float = 0.0
    db_up: float = 0.0
    drained_from: float = 0.0


def inflict_faults(fronts: Fronts, clients: Clients, treasurer: Treasurer) -> Timeline:
    """The three faults, one after the other, each while requests run."""
    when = Timeline()
    clients.wait_for(
        "answers from both fronts",
        lambda told: {t.front for t in told if t.ending == "answered"} == {"a", "b"},
        60,
    )

    # 1. an engine replica of front A, while streams run on it
    pids = replica_pids(fronts.a)
    assert set(pids) == {"0", "1"}
    in_flight: dict[str, float] = {}

    def busy() -> bool:  # streams under way, and a replica running several requests
        in_flight.update(replica_series(fronts.a, "in_flight_requests"))
        return fronts.streaming_on("a", 0.5) > 0 and max(in_flight.values()) >= 2

    wait_until("streams running on front A", busy, 30)
    when.victim = max(in_flight, key=lambda k: in_flight[k])
    os.kill(pids[when.victim], signal.SIGKILL)
    time.sleep(4)

    # 2. front B, killed -9 while it streams (for a while: progress reaches a reservation
    # about once a second), then started again on the same data
    wait_until("streams running on front B", lambda: fronts.streaming_on("b", 1.0) > 0, 60)
    fronts.b.stop(signal.SIGKILL)
    when.b_killed = time.monotonic()
    restarted = start_server(fronts.b.data_dir, *fronts.b_args)
    with fronts.lock:
        fronts.b = restarted
    when.b_back = time.monotonic()
    clients.wait_for(
        "an answer from the restarted front B",
        lambda told: any(
            t.front == "b" and t.ending == "answered" and t.started > when.b_killed for t in told
        ),
        60,
    )

    # 3. the database, while both fronts serve
    wait_until(
        "streams running", lambda: fronts.streaming_on("a") + fronts.streaming_on("b") > 0, 30
    )
    database("stop")
    when.db_down = time.monotonic()
    try:
        clients.wait_for(
            "a 503 ledger_unavailable",
            lambda told: any(
                t.code == "ledger_unavailable" and t.started > when.db_down for t in told
            ),
            30,
        )
        time.sleep(2)
    finally:
        database("start")
    when.db_up = time.monotonic()
    clients.wait_for(
        "answers from both fronts after the restart",
        lambda told: (
            {t.front for t in told if t.ending == "answered" and t.started > when.db_up}
            == {"a", "b"}
        ),
        60,
    )

    # the budget is no longer topped up: the clients spend it to its end
    treasurer.topping_up = False
    when.drained_from = time.monotonic()
    time.sleep(4)
    return when


def check_endings(told: list[Told], when: Timeline) -> None:
    """Every client came back with an answer, a refusal, or (front B killed) a broken line."""
    endings = {t.ending for t in told}
    assert endings <= {"answered", "error_event", "refused", "cut", "unreachable"}, [
        t
        for t in told
        if t.ending not in ("answered", "error_event", "refused", "cut", "unreachable")
    ]
    codes = {t.code for t in told if t.ending == "refused"}
    assert codes <= REFUSALS | {"engine_error"}, codes  # engine_error: a replica died under it
    assert all(t.code == "engine_error" for t in told if t.ending == "error_event")
    for t in told:  # only the killed front broke a line or refused a connection
        if t.ending == "cut":
            assert t.front == "b" and t.started < when.b_killed <= t.ended + 1, t
        if t.ending == "unreachable":
            assert t.front == "b" and when.b_killed - 1 < t.started < when.b_back, t
    assert "cut" in endings, "killing front B interrupted nothing"
    assert any(t.ending == "error_event" or t.code == "engine_error" for t in told), (
        "killing a replica ended nothing"
    )
    # the budget was tight all along, not only once it was no longer topped up
    assert any(t.code == "insufficient_quota" and t.ended < when.drained_from for t in told)
    assert any(
        when.db_down < t.started < when.db_up and t.code == "ledger_unavailable" for t in told
    )


def check_ledger(told: list[Told], rows: list[dict]) -> None:
    """One row per request id, each what its client was told."""
    assert len(rows) == len({r["request_id"] for r in rows}), "a request id billed twice"
    by_id = {r["request_id"]: r for r in rows}
    seen = [t for t in told if t.request_id is not None]
    assert len(seen) == len({t.request_id for t in seen})
    for t in seen:
        row = by_id.get(t.request_id)  # type: ignore[arg-type]
        assert row is not None, f"no ledger row for what a client was told: {t}"
        if t.ending == "answered":
            assert t.usage is not None
            assert row["status"] == "settled" and row["finish_reason"] in ("stop", "length")
            assert row["prompt_tokens"] == t.usage["prompt_tokens"], (row, t)
            assert row["completion_tokens"] == t.usage["completion_tokens"] == t.tokens, (row, t)
        elif t.ending == "error_event":  # its replica died under it: billed what it delivered
            assert row["status"] == "settled" and row["finish_reason"] == "error", (row, t)
            assert row["completion_tokens"] == t.tokens, (row, t)
        elif row["status"] == "reconciled":  # front B was killed: billed its last progress
            assert row["finish_reason"] == "interrupted", row
            assert row["completion_tokens"] <= t.tokens, (row, t)
        else:  # settled just before the kill, its last chunks lost with the front
            assert row["completion_tokens"] == t.tokens, (row, t)
    assert any(r["status"] == "reconciled" for r in rows), "front B left nothing to reconcile"
    # Rows whose id no client saw: requests that ended before their id reached the client (an
    # error answer, which bills nothing, or a whole answer lost with front B).
    ids = {t.request_id for t in seen}
    unseen = [r for r in rows if r["request_id"] not in ids]
    lost_with_b = [t for t in told if t.request_id is None and t.ending == "cut"]
    errors = [t for t in told if t.ending == "refused" and t.code not in REFUSALS]
    assert len(unseen) <= len(lost_with_b) + len(errors), (unseen, lost_with_b, errors)
    assert all(r["amount_micro_usd"] == 0 for r in unseen if r["finish_reason"] == "error")
    assert sum(r["amount_micro_usd"] > 0 for r in unseen) <= len(lost_with_b), unseen


@pytest.mark.skipif(
    not CTL,
    reason="set TOKENFACTORY_TEST_POSTGRES_CTL (e.g. 'pg_ctlcluster 15 main') to let "
    "the test stop and start the database",
)
def test_a_replica_a_front_and_the_database_die_under_load_and_the_ledger_stays_exact(
    pg_url: str, fronts: Fronts, tmp_path: Path
):
    tiers = tmp_path / "tiers.toml"
    tiers.write_text(open_tiers_toml())
    catalog = load_tiers(tiers)
    worst = max_cost(catalog["high"], PROMPT_BOUND, STREAM_TOKENS)
    admin = Billing.open(catalog, pg_url, tmp_path / "admin", progress_interval_s=0)
    key, raw = admin.create_key("chaos", "high", budget_micro_usd=5 * worst)
    treasurer = Treasurer(admin, key.key_id, headroom=5 * worst)
    clients = Clients(fronts, raw)
    treasurer.start()
    clients.start()
    try:
        when = inflict_faults(fronts, clients, treasurer)
    finally:
        clients.stop()
        treasurer.stop()

    # A live front reconciles what the killed one held: the restarted one at its start, or
    # the other when it next looks for fronts that are gone (every lease/3 s).
    wait_until("every reservation closed", lambda: read_ledger(pg_url, key.key_id)[1] == 0, 60)
    wait_until(
        "the killed replica back",
        lambda: (
            replica_series(fronts.a, "up") == {"0": 1.0, "1": 1.0}
            and replica_series(fronts.a, "restarts_total").get(when.victim, 0) >= 1
        ),
        120,
    )
    rows, _ = read_ledger(pg_url, key.key_id)
    told = clients.told
    tally = {e: sum(t.ending == e for t in told) for e in sorted({t.ending for t in told})}
    print(
        f"chaos: {len(told)} requests {tally}, errors "
        f"{sorted(Counter(t.code for t in told if t.code).items())}; ledger: {len(rows)} "
        f"rows, {sum(r['status'] == 'reconciled' for r in rows)} reconciled"
    )
    check_endings(told, when)
    check_ledger(told, rows)

    # the money: what is spent is the ledger, nothing is held, the budget was never passed
    final = admin.find_key(key.key_id)
    state = admin.budget_state(final)
    admin.close()
    assert state.reserved_micro_usd == 0
    assert state.spent_micro_usd == sum(r["amount_micro_usd"] for r in rows)
    assert final.budget_micro_usd is not None
    assert state.spent_micro_usd <= final.budget_micro_usd
    assert treasurer.samples > 5 and not treasurer.over, treasurer.over

    for front in (fronts.a, fronts.b):
        front.stop()
    logs = "".join(p.read_text(errors="replace") for p in tmp_path.glob("front-*/server-*.log"))
    assert "Traceback" not in logs, logs[-4000:]
