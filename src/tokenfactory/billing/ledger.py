"""Reservations (a request's maximum cost held against its key's budget while it runs) and
ledger entries (one per request: what was delivered and what it cost)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from tokenfactory.billing.db import LedgerRow, ReservationRow, as_utc, to_storage, utcnow
from tokenfactory.billing.keys import ApiKey
from tokenfactory.billing.money import usd
from tokenfactory.tiers import Tier, TierCatalog

SETTLED = "settled"
RECONCILED = "reconciled"
INTERRUPTED = "interrupted"  # finish_reason of a request reconciled after a crash


@dataclass
class Reservation:
    request_id: str
    key: ApiKey
    model: str
    tier_requested: str
    reserved_micro_usd: int
    reserved_tokens: int
    created_monotonic: float
    created_at: datetime  # UTC
    admitted_prompt_tokens: int = 0
    max_completion_tokens: int = 0
    # the last progress reported by record_progress (what a crash bills)
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    tier_so_far: str = ""
    task_id: str | None = None  # the caller's task, billed against the key's task budget

    def __post_init__(self) -> None:
        if not self.tier_so_far:
            self.tier_so_far = self.tier_requested


def max_cost(tier: Tier, prompt_tokens: int, max_completion_tokens: int) -> int:
    """The most a request can cost at `tier`: every prompt token uncached, every token used."""
    return tier.cost_micro_usd(prompt_tokens, 0, max_completion_tokens)


def reservation_row(res: Reservation, tier: Tier, front_id: str) -> ReservationRow:
    now = to_storage(res.created_at)
    return ReservationRow(
        request_id=res.request_id,
        key_id=res.key.key_id,
        account=res.key.account,
        model=res.model,
        tier_requested=res.tier_requested,
        tier_so_far=res.tier_so_far,
        reserved_micro_usd=res.reserved_micro_usd,
        reserved_tokens=res.reserved_tokens,
        input_price=tier.input_price,
        cached_input_price=tier.cached_input_price,
        output_price=tier.output_price,
        prompt_tokens=0,
        cached_tokens=0,
        completion_tokens=0,
        created_at=now,
        updated_at=now,
        task_id=res.task_id,
        front_id=front_id,
    )


@dataclass(frozen=True)
class LedgerEntry:
    request_id: str
    created_at: datetime  # UTC, admission
    finished_at: datetime  # UTC, settlement
    account: str
    key_id: str
    model: str
    tier_requested: str
    tier_delivered: str
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    input_price: int  # micro-USD per million tokens, as applied
    cached_input_price: int
    output_price: int
    amount_micro_usd: int
    queue_time_s: float | None
    ttft_s: float | None
    decode_tokens_per_s: float | None
    finish_reason: str
    client_disconnected: bool
    error: str | None
    status: str  # "settled" | "reconciled"
    task_id: str | None = None

    @property
    def amount_usd(self) -> str:
        return usd(self.amount_micro_usd)

    def as_dict(self) -> dict:
        out = asdict(self)
        out["created_at"] = self.created_at.isoformat()
        out["finished_at"] = self.finished_at.isoformat()
        return out


_COLUMNS = [f for f in LedgerEntry.__dataclass_fields__]


def entry_from_row(row: LedgerRow) -> LedgerEntry:
    values = {name: getattr(row, name) for name in _COLUMNS}
    values["created_at"] = as_utc(row.created_at)
    values["finished_at"] = as_utc(row.finished_at)
    values["client_disconnected"] = bool(row.client_disconnected)
    return LedgerEntry(**values)


def ledger_row(entry: LedgerEntry) -> LedgerRow:
    values = {name: getattr(entry, name) for name in _COLUMNS}
    values["created_at"] = to_storage(entry.created_at)
    values["finished_at"] = to_storage(entry.finished_at)
    return LedgerRow(**values)


def reconciled_entry(row: Any, catalog: TierCatalog) -> LedgerEntry:
    """The ledger entry of a reservation row whose front is gone: billed at its last recorded
    progress and tier (today's prices of that tier; the admission's when it is unknown)."""
    name = row.tier_so_far if row.tier_so_far in catalog else row.tier_requested
    prices = (row.input_price, row.cached_input_price, row.output_price)
    if name in catalog:
        t = catalog[name]
        prices = (t.input_price, t.cached_input_price, t.output_price)
    probe = Tier(name, 0, "", *prices, 1.0, 1.0, False)
    cached = min(row.cached_tokens, row.prompt_tokens)
    return LedgerEntry(
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
        amount_micro_usd=probe.cost_micro_usd(row.prompt_tokens, cached, row.completion_tokens),
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


def now_utc() -> datetime:
    return as_utc(utcnow())  # type: ignore[return-value]
