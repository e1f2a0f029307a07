"""`Billing`: admission (rate limits + budget reservations), progress, settlement,
reconciliation and reports over one database; key operations come from `keystore.KeyMethods`.

The database is the authority, so several fronts (server processes, on one host or many) can
share one PostgreSQL ledger and stay exact:

- budgets: `holds` counters per key and per (key, task), moved in the same transaction as the
  reservation or ledger row that moves them; a reservation is one conditional upsert;
- rate limits: in PostgreSQL rows every front updates (`shared_limits`), or in this process's
  memory on SQLite, the embedded single-process default (`limits.MemoryRateLimits`);
- each reservation names the front holding it; a front heartbeats its row, and reservations
  of a front that is gone are reconciled by another, each exactly once (the DELETE of the
  reservation row decides who does it);
- a database that cannot be reached turns into `LedgerUnavailableError` (HTTP 503); a
  settlement that cannot be written waits in memory and is written when the database is back.

This process's memory only keeps its own open reservations (their progress, written about
once a second) and settlements waiting for the database.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import bindparam, delete, select, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError, OperationalError

from tokenfactory.billing import fronts, holds, reports
from tokenfactory.billing.db import (
    LedgerRow,
    ReservationRow,
    make_engine,
    migrate,
    table,
    utcnow,
)
from tokenfactory.billing.errors import (
    BillingInputError,
    InsufficientQuotaError,
    LedgerUnavailableError,
)
from tokenfactory.billing.fronts import FrontIdentity
from tokenfactory.billing.keys import ApiKey
from tokenfactory.billing.keystore import KeyMethods
from tokenfactory.billing.ledger import (
    SETTLED,
    LedgerEntry,
    Reservation,
    entry_from_row,
    ledger_row,
    max_cost,
    now_utc,
    reconciled_entry,
    reservation_row,
)
from tokenfactory.billing.limits import MemoryRateLimits, RateLimits
from tokenfactory.billing.tasks import check_task_id
from tokenfactory.tiers import Tier, TierCatalog

log = logging.getLogger("tokenfactory.billing")


def default_data_dir() -> Path:
    """$TOKENFACTORY_DATA_DIR, else ~/.local/share/tokenfactory."""
    env = os.environ.get("TOKENFACTORY_DATA_DIR")
    return Path(env).expanduser() if env else Path.home() / ".local" / "share" / "tokenfactory"


@dataclass(frozen=True)
class BudgetState:
    budget_micro_usd: int | None
    spent_micro_usd: int  # settled and reconciled ledger amounts
    reserved_micro_usd: int  # open reservations

    @property
    def committed_micro_usd(self) -> int:
        return self.spent_micro_usd + self.reserved_micro_usd

    @property
    def remaining_micro_usd(self) -> int | None:
        if self.budget_micro_usd is None:
            return None
        return max(0, self.budget_micro_usd - self.committed_micro_usd)


def is_unavailable(exc: BaseException) -> bool:
    """Whether a database error means "cannot reach the database now" (rather than a bug)."""
    if isinstance(exc, OperationalError | InterfaceError):
        return True
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


class Billing(KeyMethods):
    def __init__(
        self,
        catalog: TierCatalog,
        engine: Engine,
        data_dir: Path,
        *,
        clock: Callable[[], float] | None = None,
        wall_clock: Callable[[], datetime] = utcnow,
        progress_interval_s: float = 1.0,
        auth_cache_ttl_s: float = 5.0,
        lease_s: float = 30.0,
    ):
        """`clock`: seconds for the rate-limit buckets (monotonic in memory, the epoch when
        they are shared); `wall_clock`: naive UTC now, for heartbeats and leases; `lease_s`:
        how long a front may miss its heartbeats before its reservations are reconciled."""
        self.catalog = catalog
        self.engine = engine
        self.data_dir = data_dir
        self._wall = wall_clock
        self._progress_interval_s = progress_interval_s
        self._auth_ttl = auth_cache_ttl_s
        self.lease = timedelta(seconds=lease_s)
        self._lock = threading.RLock()
        self._settled_cv = threading.Condition(self._lock)
        # SQLite has one writer: queue this process's writers here rather than in busy-waits.
        self.shared = engine.dialect.name == "postgresql"
        self._write_lock: contextlib.AbstractContextManager = (
            contextlib.nullcontext() if self.shared else threading.Lock()
        )
        self.rate_limits: RateLimits
        if self.shared:
            from tokenfactory.billing.shared_limits import DatabaseRateLimits

            self.rate_limits = DatabaseRateLimits(engine, clock or time.time)
        else:
            self.rate_limits = MemoryRateLimits(clock or time.monotonic)
        self._clock = clock or time.monotonic
        self._auth: dict[str, tuple[ApiKey, float]] = {}  # sha256 -> (key, valid until)
        self._headers: dict[str, dict[str, str]] = {}  # key id -> after its last admission
        self._open: dict[str, Reservation] = {}  # this front's admitted, unsettled requests
        self._settling: set[str] = set()
        self._dirty: set[str] = set()
        # settled, but the database was gone: (entry, reservation) written when it is back
        self._unwritten: dict[str, tuple[LedgerEntry, Reservation]] = {}
        # admissions whose commit failed without an answer: cancelled when the database is back
        self._doubtful: dict[str, Reservation] = {}
        self._closed = False
        self.front = FrontIdentity.of_this_process()
        with self._write() as conn:
            fronts.register(conn, self.front, self._wall())
        self._connected_since: datetime | None = self._wall()
        self._next_heartbeat = 0.0
        self._stop = threading.Event()
        self._flusher: threading.Thread | None = None
        if progress_interval_s > 0:
            self._flusher = threading.Thread(
                target=self._upkeep_loop, name="billing-upkeep", daemon=True
            )
            self._flusher.start()

    # ---- opening and closing -------------------------------------------------------------

    @classmethod
    def open(
        cls,
        catalog: TierCatalog,
        database_url: str | None = None,
        data_dir: Path | None = None,
        **options: Any,
    ) -> Billing:
        """Create the data directory (0700) and database if needed, migrate to head, register
        this process as a front.

        `options`: clock, wall_clock, progress_interval_s, auth_cache_ttl_s, lease_s.
        """
        data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
        if not data_dir.exists():
            data_dir.mkdir(parents=True, mode=0o700)
            data_dir.chmod(0o700)
        url = database_url or f"sqlite:///{data_dir / 'ledger.db'}"
        engine = make_engine(url)
        migrate(engine)
        return cls(catalog, engine, data_dir, **options)

    def close(self) -> None:
        """Write pending progress and settlements, leave the fronts table and release the
        database. Reservations still open are reconciled by the next front that looks."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self._flusher is not None:
            self._flusher.join(timeout=5)
        with contextlib.suppress(Exception):
            self.flush_progress()
        with contextlib.suppress(Exception):
            self.write_unwritten()
        with contextlib.suppress(Exception), self._write() as conn:
            fronts.unregister(conn, self.front)
        self.engine.dispose()

    def __enter__(self) -> Billing:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextlib.contextmanager
    def _unavailable_as_503(self) -> Iterator[None]:
        try:
            yield
        except DBAPIError as exc:
            if isinstance(exc, IntegrityError) or not is_unavailable(exc):
                raise
            raise LedgerUnavailableError() from exc

    @contextlib.contextmanager
    def _session(self) -> Iterator[Connection]:
        with self._unavailable_as_503(), self.engine.connect() as conn:
            yield conn

    @contextlib.contextmanager
    def _write(self) -> Iterator[Connection]:
        with self._unavailable_as_503(), self._write_lock, self.engine.begin() as conn:
            yield conn

    # ---- admission -----------------------------------------------------------------------

    def admit(
        self,
        key: ApiKey,
        *,
        request_id: str,
        model: str,
        tier: Tier,
        prompt_tokens: int,
        max_completion_tokens: int,
        task_id: str | None = None,
    ) -> Reservation:
        """Take the rate limits and reserve the request's maximum cost against the key's
        budget and, for a request with a task id, against the key's budget per task: one
        transaction, so a refusal takes nothing and two fronts never share a last dollar."""
        if not request_id or len(request_id) > 128:
            raise BillingInputError("a request id has 1 to 128 characters")
        if task_id is not None:
            check_task_id(task_id)
        if prompt_tokens < 0 or max_completion_tokens < 0:
            raise BillingInputError("token counts must be >= 0")
        self.check_tier(key, tier.name)
        cost = max_cost(tier, prompt_tokens, max_completion_tokens)
        tokens = prompt_tokens + max_completion_tokens
        res = Reservation(
            request_id=request_id,
            key=key,
            model=model,
            tier_requested=tier.name,
            reserved_micro_usd=cost,
            reserved_tokens=tokens,
            created_monotonic=self._clock(),
            created_at=now_utc(),
            admitted_prompt_tokens=prompt_tokens,
            max_completion_tokens=max_completion_tokens,
            task_id=task_id,
        )
        with self._lock:
            if request_id in self._open or request_id in self._settling:
                raise BillingInputError(f"request id {request_id!r} is already admitted")
            self._settling.add(request_id)  # no second admission of this id meanwhile
        took = False
        try:
            with self._write() as conn:
                headers = self.rate_limits.take(conn, key, tokens)
                took = True
                self._reserve(conn, key, task_id, cost)
                row = reservation_row(res, tier, self.front.front_id)
                conn.execute(
                    table(ReservationRow).insert().values(
                        **{c.name: getattr(row, c.name) for c in table(ReservationRow).c}
                    )
                )
        except BaseException as exc:
            if took:
                self.rate_limits.undo(key, tokens)
            if isinstance(exc, LedgerUnavailableError):
                # The commit may have happened with its answer lost: cancel it once the
                # database is back (a no-op when nothing was written).
                with self._lock:
                    self._doubtful[request_id] = res
            if isinstance(exc, IntegrityError):
                raise BillingInputError(f"request id {request_id!r} is already admitted") from None
            raise
        finally:
            with self._lock:
                self._settling.discard(request_id)
        with self._lock:
            self._open[request_id] = res
            if headers and self.shared:
                self._headers[key.key_id] = headers
        return res

    def _reserve(self, conn: Connection, key: ApiKey, task_id: str | None, cost: int) -> None:
        if not holds.try_reserve(conn, key.key_id, holds.WHOLE_KEY, cost, key.budget_micro_usd):
            assert key.budget_micro_usd is not None
            raise InsufficientQuotaError(
                budget_micro_usd=key.budget_micro_usd,
                committed_micro_usd=holds.read(conn, key.key_id).committed_micro_usd,
                needed_micro_usd=cost,
            )
        if task_id is None:
            return
        if not holds.try_reserve(conn, key.key_id, task_id, cost, key.task_budget_micro_usd):
            assert key.task_budget_micro_usd is not None
            raise InsufficientQuotaError(
                budget_micro_usd=key.task_budget_micro_usd,
                committed_micro_usd=holds.read(conn, key.key_id, task_id).committed_micro_usd,
                needed_micro_usd=cost,
                task_id=task_id,
            )

    def rate_limit_headers(self, key: ApiKey) -> dict[str, str]:
        """The key's x-ratelimit-* headers. Shared buckets: as this front's last admission for
        the key left them (the server asks right after admitting; this keeps SQL off its event
        loop), read from the database when there is none. {} when they cannot be read now:
        they are advice, never a reason to fail a request already admitted."""
        if not key.limited:
            return {}
        with self._lock:
            if (cached := self._headers.get(key.key_id)) is not None:
                return dict(cached)
        try:
            with self._unavailable_as_503():
                return self.rate_limits.headers(key)
        except LedgerUnavailableError:
            return {}

    def budget_state(self, key: ApiKey) -> BudgetState:
        with self._session() as conn:
            counter = holds.read(conn, key.key_id)
        return BudgetState(
            key.budget_micro_usd, counter.spent_micro_usd, counter.reserved_micro_usd
        )

    def task_budget_state(self, key: ApiKey, task_id: str) -> BudgetState:
        """What one task id has spent and holds with this key, against its budget per task."""
        check_task_id(task_id)
        with self._session() as conn:
            counter = holds.read(conn, key.key_id, task_id)
        return BudgetState(
            key.task_budget_micro_usd, counter.spent_micro_usd, counter.reserved_micro_usd
        )

    def open_reservations(self) -> list[Reservation]:
        """This front's admitted requests not settled yet."""
        with self._lock:
            return list(self._open.values())

    # ---- progress ------------------------------------------------------------------------

    def record_progress(
        self,
        reservation: Reservation,
        *,
        prompt_tokens: int,
        cached_tokens: int,
        completion_tokens: int,
        tier_so_far: str,
    ) -> None:
        """Remember how far a request got; a background thread writes it about once a second."""
        with self._lock:
            if reservation.request_id not in self._open:
                return
            reservation.prompt_tokens = prompt_tokens
            reservation.cached_tokens = min(cached_tokens, prompt_tokens)
            reservation.completion_tokens = completion_tokens
            reservation.tier_so_far = tier_so_far
            self._dirty.add(reservation.request_id)

    def flush_progress(self) -> int:
        """Write recorded progress to the reservation rows now; returns how many rows."""
        with self._lock:
            batch = [
                {
                    "b_id": r.request_id,
                    "b_p": r.prompt_tokens,
                    "b_c": r.cached_tokens,
                    "b_o": r.completion_tokens,
                    "b_t": r.tier_so_far,
                    "b_u": utcnow(),
                }
                for rid in self._dirty
                if (r := self._open.get(rid)) is not None
            ]
            self._dirty.clear()
        if not batch:
            return 0
        reservations = table(ReservationRow)
        stmt = (
            update(reservations)
            .where(reservations.c.request_id == bindparam("b_id"))
            .values(
                prompt_tokens=bindparam("b_p"),
                cached_tokens=bindparam("b_c"),
                completion_tokens=bindparam("b_o"),
                tier_so_far=bindparam("b_t"),
                updated_at=bindparam("b_u"),
            )
        )
        try:
            with self._write() as conn:
                conn.execute(stmt, batch)
        except Exception:
            with self._lock:
                self._dirty.update(b["b_id"] for b in batch if b["b_id"] in self._open)
            raise
        return len(batch)

    # ---- upkeep: progress, heartbeats, the database coming back, fronts that are gone -----

    def _upkeep_loop(self) -> None:
        failing = False
        while not self._stop.wait(self._progress_interval_s):
            try:
                self.upkeep()
                if failing:
                    log.warning("the billing database is reachable again")
                failing = False
            except LedgerUnavailableError:
                if not failing:
                    log.warning("the billing database is unreachable; retrying every %.3gs",
                                self._progress_interval_s)
                failing = True
                self._connected_since = None
            except Exception:  # keep going: the next tick retries
                log.exception("billing upkeep failed")

    def upkeep(self) -> None:
        """One tick of the background thread: write progress, put right what the database
        missed while it was gone; every lease/3 seconds, heartbeat and reconcile the fronts
        that are gone."""
        self.flush_progress()
        self.write_unwritten()
        now_s = time.monotonic()
        if now_s < self._next_heartbeat:
            return
        self._next_heartbeat = now_s + self.lease.total_seconds() / 3
        now = self._wall()
        with self._write() as conn:
            fronts.heartbeat(conn, self.front, now)
        if self._connected_since is None:
            self._connected_since = now
        # Judge another front by its heartbeat only after this one has been connected for a
        # whole lease: after an outage every front's heartbeat is old, the live ones' too.
        trust_lease = now - self._connected_since >= self.lease
        self._reconcile_gone(self.catalog, trust_lease=trust_lease)

    def write_unwritten(self) -> int:
        """Write the settlements and cancellations the database missed; returns how many."""
        with self._lock:
            doubtful = list(self._doubtful.values())
            unwritten = list(self._unwritten.values())
        done = 0
        for res in doubtful:
            with self._write() as conn:
                self._delete_reservation(conn, res.request_id, billed=0)
            with self._lock:
                self._doubtful.pop(res.request_id, None)
            done += 1
        for entry, res in unwritten:
            self._write_settlement(entry, res)
            with self._lock:
                self._unwritten.pop(entry.request_id, None)
                self._open.pop(entry.request_id, None)
                self._dirty.discard(entry.request_id)
            done += 1
        return done

    # ---- settlement ----------------------------------------------------------------------

    def settle(
        self,
        reservation: Reservation,
        *,
        tier_delivered: Tier,
        prompt_tokens: int,
        cached_tokens: int,
        completion_tokens: int,
        finish_reason: str,
        queue_time_s: float | None,
        ttft_s: float | None,
        decode_tokens_per_s: float | None,
        client_disconnected: bool,
        error: str | None = None,
    ) -> LedgerEntry:
        """Bill what was delivered, once. A second call for the same request id returns the
        existing row and bills nothing. When the database cannot be reached the entry is
        kept here and written when it is back (or, if this process dies first, the
        reservation is reconciled at this final progress by another front)."""
        rid = reservation.request_id
        with self._lock:
            while rid in self._settling:
                self._settled_cv.wait()
            self._settling.add(rid)
        try:
            with self._lock:
                if rid in self._unwritten:
                    return self._unwritten[rid][0]
            cached = max(0, min(cached_tokens, prompt_tokens))
            entry = LedgerEntry(
                request_id=rid,
                created_at=reservation.created_at,
                finished_at=now_utc(),
                account=reservation.key.account,
                key_id=reservation.key.key_id,
                model=reservation.model,
                tier_requested=reservation.tier_requested,
                tier_delivered=tier_delivered.name,
                prompt_tokens=prompt_tokens,
                cached_tokens=cached,
                completion_tokens=completion_tokens,
                input_price=tier_delivered.input_price,
                cached_input_price=tier_delivered.cached_input_price,
                output_price=tier_delivered.output_price,
                amount_micro_usd=tier_delivered.cost_micro_usd(
                    prompt_tokens, cached, completion_tokens
                ),
                queue_time_s=queue_time_s,
                ttft_s=ttft_s,
                decode_tokens_per_s=decode_tokens_per_s,
                finish_reason=(finish_reason or "unknown")[:32],
                client_disconnected=bool(client_disconnected),
                error=error[:1024] if error else None,
                status=SETTLED,
                task_id=reservation.task_id,
            )
            try:
                billed = self._write_settlement(entry, reservation)
            except LedgerUnavailableError:
                with self._lock:
                    self._unwritten[rid] = (entry, reservation)
                    if rid in self._open:  # what a reconciliation bills if this front dies
                        self.record_progress(
                            reservation,
                            prompt_tokens=prompt_tokens,
                            cached_tokens=cached,
                            completion_tokens=completion_tokens,
                            tier_so_far=tier_delivered.name,
                        )
                log.warning("the ledger is unreachable: %s is written when it is back", rid)
                return entry
            with self._lock:
                self._open.pop(rid, None)
                self._dirty.discard(rid)
            return billed
        finally:
            with self._lock:
                self._settling.discard(rid)
                self._settled_cv.notify_all()

    def _write_settlement(self, entry: LedgerEntry, reservation: Reservation) -> LedgerEntry:
        """In one transaction: delete the reservation, insert the ledger row, move the money
        and give back unused tokens. When the request is already in the ledger (settled
        before, or reconciled by another front), bill nothing and return that row."""
        rid = entry.request_id
        try:
            with self._write() as conn:
                gone = self._delete_reservation(conn, rid, billed=None)
                if gone is None and (existing := self._entry_in(conn, rid)) is not None:
                    return existing
                self._insert_entry(conn, entry)
                if gone is not None:
                    used = entry.prompt_tokens + entry.completion_tokens
                    self.rate_limits.give_back(
                        conn, reservation.key, int(gone.reserved_tokens) - used
                    )
                released = 0 if gone is None else int(gone.reserved_micro_usd)
                self._move_money(conn, entry, released=released)
            return entry
        except IntegrityError:  # a concurrent settlement of the same id won
            existing = self.get_entry(rid)
            if existing is None:  # pragma: no cover - an integrity error of another kind
                raise
            return existing

    def _delete_reservation(
        self, conn: Connection, rid: str, *, billed: int | None, front_id: Any = ...
    ) -> Any:
        """Delete a reservation row (only if `front_id` holds it, when given; None: rows with no
        front) and return it as it was; None when it is not there (another front or call took
        it). `billed` not None: also release its hold and bill that much, no ledger row."""
        res = table(ReservationRow)
        query = delete(res).where(res.c.request_id == rid)
        if front_id is not ...:
            query = query.where(
                res.c.front_id.is_(None) if front_id is None else res.c.front_id == front_id
            )
        row = conn.execute(query.returning(*res.c)).first()
        if row is not None and billed is not None:
            for task in self._scopes(row.task_id):
                holds.settle(
                    conn, row.key_id, task, released=row.reserved_micro_usd, billed=billed
                )
        return row

    @staticmethod
    def _scopes(task_id: str | None) -> list[str]:
        return [holds.WHOLE_KEY] if task_id is None else [holds.WHOLE_KEY, task_id]

    def _move_money(self, conn: Connection, entry: LedgerEntry, *, released: int) -> None:
        for task in self._scopes(entry.task_id):
            holds.settle(
                conn, entry.key_id, task, released=released, billed=entry.amount_micro_usd
            )

    @staticmethod
    def _insert_entry(conn: Connection, entry: LedgerEntry) -> None:
        row = ledger_row(entry)
        ledger = table(LedgerRow)
        conn.execute(
            ledger.insert().values(
                **{c.name: getattr(row, c.name) for c in ledger.c if c.name != "id"}
            )
        )

    @staticmethod
    def _entry_in(conn: Connection, request_id: str) -> LedgerEntry | None:
        row = conn.execute(
            select(table(LedgerRow)).where(LedgerRow.request_id == request_id)
        ).first()
        return entry_from_row(row) if row is not None else None  # type: ignore[arg-type]

    def get_entry(self, request_id: str) -> LedgerEntry | None:
        with self._session() as conn:
            return self._entry_in(conn, request_id)

    # ---- reconciliation ------------------------------------------------------------------

    def reconcile_open_reservations(self, catalog: TierCatalog | None = None) -> int:
        """Bill every reservation held by a front that is gone (closed, killed, or silent for
        longer than the lease) at its last recorded progress and tier (finish_reason
        "interrupted", status "reconciled"); returns how many rows it added. Run at start;
        a running front also does it in the background. This front's own requests are left
        alone, and of two fronts reconciling at once each reservation goes to exactly one."""
        return self._reconcile_gone(catalog or self.catalog, trust_lease=True)

    def _reconcile_gone(self, catalog: TierCatalog, *, trust_lease: bool) -> int:
        res = table(ReservationRow)
        added = 0
        with self._session() as conn:
            gone = fronts.gone_fronts(
                conn, self.front, self._wall(), self.lease, trust_lease=trust_lease
            )
        for front_id in gone:
            held_by = res.c.front_id.is_(None) if front_id is None else res.c.front_id == front_id
            with self._session() as conn:
                rids = [r[0] for r in conn.execute(select(res.c.request_id).where(held_by))]
            for rid in rids:
                added += self._reconcile_one(rid, front_id, catalog)
            if front_id is not None:
                with self._write() as conn:
                    fronts.forget(conn, front_id)
        if trust_lease:
            with self._write() as conn:
                fronts.forget_silent(conn, self.front, self._wall(), self.lease)
        if added:
            log.warning("reconciled %d reservations left open by fronts that are gone", added)
        return added

    def _reconcile_one(self, rid: str, front_id: str | None, catalog: TierCatalog) -> int:
        """1 when this call billed the reservation, 0 when someone else had it first."""
        with self._write() as conn:
            # the DELETE is the claim: of two fronts, the second finds nothing to delete (and
            # RETURNING hands over the progress as last written)
            row = self._delete_reservation(conn, rid, billed=None, front_id=front_id)
            if row is None:
                return 0
            if self._entry_in(conn, rid) is not None:  # billed already: only release
                for task in self._scopes(row.task_id):
                    holds.settle(conn, row.key_id, task, released=row.reserved_micro_usd,
                                 billed=0)
                return 0
            entry = reconciled_entry(row, catalog)
            self._insert_entry(conn, entry)
            self._move_money(conn, entry, released=row.reserved_micro_usd)
        return 1

    # ---- reports -------------------------------------------------------------------------

    def usage(
        self,
        *,
        key_id: str | None = None,
        account: str | None = None,
        since: date | datetime | None = None,
        by: str = "tier",
    ) -> list[reports.UsageRow]:
        with self._session() as conn:
            return reports.usage(conn, key_id=key_id, account=account, since=since, by=by)

    def invoice(self, account: str, month: str, *, by_task: bool = False) -> reports.Invoice:
        """An account's month: a line per tier delivered (and per task id with `by_task`)."""

        def rank(name: str) -> int:
            return self.catalog[name].rank if name in self.catalog else len(self.catalog.tiers)

        with self._session() as conn:
            return reports.invoice(conn, account, month, tier_rank=rank, by_task=by_task)

    def entries(
        self, *, account: str | None = None, key_id: str | None = None, limit: int | None = None
    ) -> list[LedgerEntry]:
        """Ledger rows, newest first."""
        ledger = table(LedgerRow)
        query = select(ledger).order_by(ledger.c.id.desc())
        if account is not None:
            query = query.where(ledger.c.account == account)
        if key_id is not None:
            query = query.where(ledger.c.key_id == key_id)
        if limit is not None:
            query = query.limit(limit)
        with self._session() as conn:
            return [entry_from_row(r) for r in conn.execute(query)]  # type: ignore[arg-type]

