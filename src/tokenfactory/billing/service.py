"""`Billing`: admission (rate limits + budget reservations), progress, settlement,
reconciliation and reports over one database; key operations come from `keystore.KeyMethods`.

Budget and rate state lives in memory under one lock (loaded from the database at open:
spent per key is the sum of its ledger amounts, plus every reservation still open) and is
written through to the database, so admission is a few dictionary operations plus one INSERT.
One server process per database: its memory is the authority for budgets and buckets.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path

from sqlalchemy import bindparam, delete, func, select, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

from tokenfactory.billing import keys as keymod
from tokenfactory.billing import reports
from tokenfactory.billing.db import (
    KeyRow,
    LedgerRow,
    ReservationRow,
    as_utc,
    make_engine,
    migrate,
    table,
    utcnow,
)
from tokenfactory.billing.errors import (
    BillingInputError,
    InsufficientQuotaError,
    RateLimitExceededError,
)
from tokenfactory.billing.keys import ApiKey
from tokenfactory.billing.keystore import KeyMethods
from tokenfactory.billing.ledger import (
    INTERRUPTED,
    RECONCILED,
    SETTLED,
    LedgerEntry,
    Reservation,
    entry_from_row,
    ledger_row,
    max_cost,
    now_utc,
    reservation_row,
)
from tokenfactory.billing.limits import KeyLimits, retry_after_headers
from tokenfactory.billing.tasks import TaskMoney, check_task_id
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


class Billing(KeyMethods):
    def __init__(
        self,
        catalog: TierCatalog,
        engine: Engine,
        data_dir: Path,
        *,
        clock: Callable[[], float] = time.monotonic,
        progress_interval_s: float = 1.0,
        auth_cache_ttl_s: float = 5.0,
    ):
        self.catalog = catalog
        self.engine = engine
        self.data_dir = data_dir
        self._clock = clock
        self._progress_interval_s = progress_interval_s
        self._auth_ttl = auth_cache_ttl_s
        self._lock = threading.RLock()
        self._settled_cv = threading.Condition(self._lock)
        # SQLite has one writer: queue this process's writers here rather than in busy-waits.
        sqlite = engine.dialect.name == "sqlite"
        self._write_lock: contextlib.AbstractContextManager = (
            threading.Lock() if sqlite else contextlib.nullcontext()
        )
        self._auth: dict[str, tuple[ApiKey, float]] = {}  # sha256 -> (key, valid until)
        self._spent: dict[str, int] = {}
        self._held: dict[str, int] = {}
        self._limits: dict[str, KeyLimits] = {}
        self._open: dict[str, Reservation] = {}
        self._settling: set[str] = set()
        self._dirty: set[str] = set()
        self._closed = False
        self._tasks = TaskMoney(self._settled_cv, self._task_spent_in_ledger)
        self._load_state()
        self._stop = threading.Event()
        self._flusher: threading.Thread | None = None
        if progress_interval_s > 0:
            self._flusher = threading.Thread(
                target=self._flush_loop, name="billing-progress", daemon=True
            )
            self._flusher.start()

    # ---- opening and closing -------------------------------------------------------------

    @classmethod
    def open(
        cls,
        catalog: TierCatalog,
        database_url: str | None = None,
        data_dir: Path | None = None,
        **options,
    ) -> Billing:
        """Create the data directory (0700) and database if needed, migrate to head, load state.

        `options`: clock (for rate limits), progress_interval_s, auth_cache_ttl_s.
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
        """Write pending progress and release the database (open reservations stay open)."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self._flusher is not None:
            self._flusher.join(timeout=5)
        with contextlib.suppress(Exception):
            self.flush_progress()
        self.engine.dispose()

    def __enter__(self) -> Billing:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _load_state(self) -> None:
        with self.engine.connect() as conn:
            for key_id, spent in conn.execute(
                select(LedgerRow.key_id, func.sum(LedgerRow.amount_micro_usd)).group_by(
                    LedgerRow.key_id
                )
            ):
                self._spent[key_id] = int(spent or 0)
            rows = conn.execute(select(table(ReservationRow))).all()
            key_rows = {
                r.key_id: keymod.key_from_row(r)
                for r in self._keys_where(conn, KeyRow.key_id.in_({row.key_id for row in rows}))
            }
        for row in rows:
            key = key_rows.get(row.key_id) or ApiKey(
                row.key_id, "", "", row.account, row.tier_requested, None, None, None, True
            )
            res = Reservation(
                request_id=row.request_id,
                key=key,
                model=row.model,
                tier_requested=row.tier_requested,
                reserved_micro_usd=row.reserved_micro_usd,
                reserved_tokens=row.reserved_tokens,
                created_monotonic=self._clock(),
                created_at=as_utc(row.created_at),  # type: ignore[arg-type]
                prompt_tokens=row.prompt_tokens,
                cached_tokens=row.cached_tokens,
                completion_tokens=row.completion_tokens,
                tier_so_far=row.tier_so_far,
                task_id=row.task_id,
                recovered=True,
            )
            self._open[row.request_id] = res
            self._held[row.key_id] = self._held.get(row.key_id, 0) + row.reserved_micro_usd
            if row.task_id is not None:
                self._tasks.hold(row.key_id, row.task_id, row.reserved_micro_usd)

    def _task_spent_in_ledger(self, key_id: str, task_id: str) -> int:
        with self.engine.connect() as conn:
            spent = conn.execute(
                select(func.coalesce(func.sum(LedgerRow.amount_micro_usd), 0))
                .where(LedgerRow.key_id == key_id)
                .where(LedgerRow.task_id == task_id)
            ).scalar()
        return int(spent or 0)

    @contextlib.contextmanager
    def _session(self) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            yield conn

    @contextlib.contextmanager
    def _write(self) -> Iterator[Connection]:
        with self._write_lock, self.engine.begin() as conn:
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
        budget and, for a request with a task id, against the key's budget per task."""
        if not request_id or len(request_id) > 128:
            raise BillingInputError("a request id has 1 to 128 characters")
        if task_id is not None:
            check_task_id(task_id)
        if prompt_tokens < 0 or max_completion_tokens < 0:
            raise BillingInputError("token counts must be >= 0")
        self.check_tier(key, tier.name)
        cost = max_cost(tier, prompt_tokens, max_completion_tokens)
        tokens = prompt_tokens + max_completion_tokens
        now = self._clock()
        with self._lock:
            if request_id in self._open:
                raise BillingInputError(f"request id {request_id!r} is already admitted")
            limits = self._limits_for(key, now)
            self._check_rate(limits, tokens)
            if key.budget_micro_usd is not None:
                committed = self._spent.get(key.key_id, 0) + self._held.get(key.key_id, 0)
                if committed + cost > key.budget_micro_usd:
                    raise InsufficientQuotaError(
                        budget_micro_usd=key.budget_micro_usd,
                        committed_micro_usd=committed,
                        needed_micro_usd=cost,
                    )
            if task_id is not None and key.task_budget_micro_usd is not None:
                committed = self._tasks.committed(key.key_id, task_id)
                if committed + cost > key.task_budget_micro_usd:
                    raise InsufficientQuotaError(
                        budget_micro_usd=key.task_budget_micro_usd,
                        committed_micro_usd=committed,
                        needed_micro_usd=cost,
                        task_id=task_id,
                    )
            if limits.requests is not None:
                limits.requests.take(1)
            if limits.tokens is not None:
                limits.tokens.take(tokens)
            self._held[key.key_id] = self._held.get(key.key_id, 0) + cost
            if task_id is not None:
                self._tasks.hold(key.key_id, task_id, cost)
            res = Reservation(
                request_id=request_id,
                key=key,
                model=model,
                tier_requested=tier.name,
                reserved_micro_usd=cost,
                reserved_tokens=tokens,
                created_monotonic=now,
                created_at=now_utc(),
                admitted_prompt_tokens=prompt_tokens,
                max_completion_tokens=max_completion_tokens,
                task_id=task_id,
            )
            self._open[request_id] = res
        try:
            with self._write() as conn:
                row = reservation_row(res, tier)
                conn.execute(
                    table(ReservationRow).insert().values(
                        **{c.name: getattr(row, c.name) for c in table(ReservationRow).c}
                    )
                )
        except BaseException as exc:
            with self._lock:
                self._release(res, refund_tokens=res.reserved_tokens)
            if isinstance(exc, IntegrityError):
                raise BillingInputError(f"request id {request_id!r} is already admitted") from None
            raise
        return res

    def _limits_for(self, key: ApiKey, now: float) -> KeyLimits:
        limits = self._limits.get(key.key_id)
        if limits is None:
            limits = self._limits[key.key_id] = KeyLimits.for_key(key.rpm, key.tpm, now)
        limits.refill(now)
        return limits

    def _check_rate(self, limits: KeyLimits, tokens: int) -> None:
        if limits.requests is not None and (wait := limits.requests.wait_for(1)) > 0:
            raise RateLimitExceededError(
                f"Rate limit reached for requests: limit {int(limits.requests.capacity)} per "
                f"minute. Please try again in {wait:.3g}s.",
                limit_type="requests",
                retry_after_s=wait,
                headers={**limits.headers(), **retry_after_headers(wait)},
            )
        if limits.tokens is None:
            return
        if tokens > limits.tokens.capacity:
            wait = 60.0
            raise RateLimitExceededError(
                f"Request too large: it may use {tokens} tokens (prompt + max completion), more "
                f"than this key's limit of {int(limits.tokens.capacity)} tokens per minute. "
                "Send a shorter prompt or a smaller max_tokens.",
                limit_type="tokens",
                retry_after_s=wait,
                headers={**limits.headers(), **retry_after_headers(wait)},
            )
        if (wait := limits.tokens.wait_for(tokens)) > 0:
            raise RateLimitExceededError(
                f"Rate limit reached for tokens: limit {int(limits.tokens.capacity)} per minute, "
                f"this request may use {tokens}. Please try again in {wait:.3g}s.",
                limit_type="tokens",
                retry_after_s=wait,
                headers={**limits.headers(), **retry_after_headers(wait)},
            )

    def _release(self, res: Reservation, refund_tokens: int) -> None:
        """Drop an open reservation's hold (caller holds the lock)."""
        if self._open.pop(res.request_id, None) is None:
            return
        self._dirty.discard(res.request_id)
        key_id = res.key.key_id
        self._held[key_id] = self._held.get(key_id, 0) - res.reserved_micro_usd
        if res.task_id is not None:
            self._tasks.release(key_id, res.task_id, res.reserved_micro_usd)
        limits = self._limits.get(key_id)
        if limits is not None and refund_tokens > 0 and limits.tokens is not None:
            limits.tokens.give_back(refund_tokens)

    def rate_limit_headers(self, key: ApiKey) -> dict[str, str]:
        if not key.limited:
            return {}
        with self._lock:
            return self._limits_for(key, self._clock()).headers()

    def budget_state(self, key: ApiKey) -> BudgetState:
        with self._lock:
            return BudgetState(
                key.budget_micro_usd,
                self._spent.get(key.key_id, 0),
                self._held.get(key.key_id, 0),
            )

    def task_budget_state(self, key: ApiKey, task_id: str) -> BudgetState:
        """What one task id has spent and holds with this key, against its budget per task."""
        check_task_id(task_id)
        with self._lock:
            return BudgetState(
                key.task_budget_micro_usd,
                self._tasks.spent(key.key_id, task_id),
                self._tasks.held(key.key_id, task_id),
            )

    def open_reservations(self) -> list[Reservation]:
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

    def _flush_loop(self) -> None:
        while not self._stop.wait(self._progress_interval_s):
            try:
                self.flush_progress()
            except Exception:  # keep going: the next tick retries
                log.exception("could not write billing progress")

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
        existing row and bills nothing."""
        rid = reservation.request_id
        with self._lock:
            while rid in self._settling:
                self._settled_cv.wait()
            held = rid in self._open
            self._settling.add(rid)
            if reservation.task_id is not None:
                self._tasks.begin_settle(reservation.key.key_id, reservation.task_id)
        newly_billed = 0  # what this call added to the ledger
        try:
            if not held and (existing := self.get_entry(rid)) is not None:
                return existing
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
            billed = self._write_entry(entry)
            with self._lock:
                if billed is entry:
                    key_id = entry.key_id
                    self._spent[key_id] = self._spent.get(key_id, 0) + entry.amount_micro_usd
                    newly_billed = entry.amount_micro_usd
                used = prompt_tokens + completion_tokens
                self._release(reservation, refund_tokens=reservation.reserved_tokens - used)
            return billed
        finally:
            with self._lock:
                self._settling.discard(rid)
                if reservation.task_id is not None:
                    self._tasks.end_settle(
                        reservation.key.key_id, reservation.task_id, newly_billed
                    )
                self._settled_cv.notify_all()

    def _write_entry(self, entry: LedgerEntry) -> LedgerEntry:
        """Insert the ledger row and delete the reservation in one transaction; when the request
        is already in the ledger, only delete the reservation and return the existing row."""
        reservations = table(ReservationRow)
        try:
            with self._write() as conn:
                row = ledger_row(entry)
                conn.execute(
                    table(LedgerRow).insert().values(
                        **{c.name: getattr(row, c.name) for c in table(LedgerRow).c
                           if c.name != "id"}
                    )
                )
                conn.execute(delete(reservations).where(
                    reservations.c.request_id == entry.request_id))
            return entry
        except IntegrityError:
            with self._write() as conn:
                conn.execute(delete(reservations).where(
                    reservations.c.request_id == entry.request_id))
            existing = self.get_entry(entry.request_id)
            if existing is None:  # pragma: no cover - an integrity error of another kind
                raise
            return existing

    def get_entry(self, request_id: str) -> LedgerEntry | None:
        with self._session() as conn:
            row = conn.execute(
                select(table(LedgerRow)).where(LedgerRow.request_id == request_id)
            ).first()
        return entry_from_row(row) if row is not None else None  # type: ignore[arg-type]

    def reconcile_open_reservations(self, catalog: TierCatalog | None = None) -> int:
        """Bill every reservation a crash left open at its last recorded progress and tier
        (finish_reason "interrupted", status "reconciled"); returns how many rows it added.

        Reservations admitted by this process are left alone.
        """
        catalog = catalog or self.catalog
        with self._lock:
            live = {rid for rid, r in self._open.items() if not r.recovered}
            live |= self._settling
        with self._session() as conn:
            rows = [
                r for r in conn.execute(select(table(ReservationRow))).all()
                if r.request_id not in live
            ]
        added = 0
        for row in rows:
            name = row.tier_so_far if row.tier_so_far in catalog else row.tier_requested
            prices = (row.input_price, row.cached_input_price, row.output_price)
            if name in catalog:
                t = catalog[name]
                prices = (t.input_price, t.cached_input_price, t.output_price)
            probe = Tier(name, 0, "", *prices, 1.0, 1.0, False)
            cached = min(row.cached_tokens, row.prompt_tokens)
            entry = LedgerEntry(
                request_id=row.request_id,
                created_at=as_utc(row.created_at),  # type: ignore[arg-type]
                finished_at=as_utc(row.updated_at),  # type: ignore[arg-type]
                account=row.account,
                key_id=row.key_id,
                model=row.model,
                tier_requested=row.tier_requested,
                tier_delivered=name,
                prompt_tokens=row.prompt_tokens,
                cached_tokens=cached,
                completion_tokens=row.completion_tokens,
                input_price=prices[0],
                cached_input_price=prices[1],
                output_price=prices[2],
                amount_micro_usd=probe.cost_micro_usd(
                    row.prompt_tokens, cached, row.completion_tokens
                ),
                queue_time_s=None,
                ttft_s=None,
                decode_tokens_per_s=None,
                finish_reason=INTERRUPTED,
                client_disconnected=False,
                error="the server stopped before this request was settled; billed at its last "
                "recorded progress",
                status=RECONCILED,
                task_id=row.task_id,
            )
            with self._lock:
                if row.task_id is not None:
                    self._tasks.begin_settle(row.key_id, row.task_id)
            billed: LedgerEntry | None = None
            try:
                billed = self._write_entry(entry)
            finally:
                with self._lock:
                    if row.task_id is not None:
                        billed_now = entry.amount_micro_usd if billed is entry else 0
                        self._tasks.end_settle(row.key_id, row.task_id, billed_now)
            with self._lock:
                if billed is entry:
                    added += 1
                    self._spent[row.key_id] = (
                        self._spent.get(row.key_id, 0) + entry.amount_micro_usd
                    )
                res = self._open.get(row.request_id)
                if res is not None:
                    self._release(res, refund_tokens=0)
        if added:
            log.warning("reconciled %d reservations left open by an earlier run", added)
        return added

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

