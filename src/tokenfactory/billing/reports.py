"""Reading the ledger back: usage grouped by tier, day, key or task, and monthly invoices
(a line per tier delivered, or per task id and tier)."""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, time

from sqlalchemy import func, select
from sqlalchemy.engine import Connection

from tokenfactory.billing.db import LedgerRow, to_storage
from tokenfactory.billing.errors import BillingInputError
from tokenfactory.billing.money import usd

GROUPINGS = ("tier", "day", "key", "day_tier", "task")


@dataclass(frozen=True)
class UsageRow:
    day: str | None  # "YYYY-MM-DD" (UTC, by finish time) when grouped by day
    tier: str | None  # the tier delivered, when grouped by tier
    key_id: str | None  # when grouped by key
    requests: int
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    amount_micro_usd: int
    task_id: str | None = None  # when grouped by task (None: requests sent without one)

    def as_dict(self) -> dict:
        return {**asdict(self), "amount_usd": usd(self.amount_micro_usd)}

    to_dict = as_dict


def since_datetime(since: date | datetime | None) -> datetime | None:
    """A `since` bound as stored (naive UTC); a date means its midnight UTC."""
    if since is None:
        return None
    if not isinstance(since, datetime):
        since = datetime.combine(since, time.min, tzinfo=UTC)
    return to_storage(since)


def _day(conn: Connection):
    if conn.dialect.name == "sqlite":
        return func.strftime("%Y-%m-%d", LedgerRow.finished_at)
    return func.to_char(LedgerRow.finished_at, "YYYY-MM-DD")


def usage(
    conn: Connection,
    *,
    key_id: str | None = None,
    account: str | None = None,
    since: date | datetime | None = None,
    until: datetime | None = None,
    by: str = "tier",
) -> list[UsageRow]:
    if by not in GROUPINGS:
        raise BillingInputError(f"cannot group usage by {by!r}; use one of: {', '.join(GROUPINGS)}")
    groups = {
        "day": [_day(conn).label("day")] if by in ("day", "day_tier") else [],
        "tier": [LedgerRow.tier_delivered.label("tier")] if by in ("tier", "day_tier") else [],
        "key_id": [LedgerRow.key_id.label("key_id")] if by == "key" else [],
        "task_id": [LedgerRow.task_id.label("task_id")] if by == "task" else [],
    }
    cols = [c for part in groups.values() for c in part]
    query = select(
        *cols,
        func.count(LedgerRow.id),
        func.coalesce(func.sum(LedgerRow.prompt_tokens), 0),
        func.coalesce(func.sum(LedgerRow.cached_tokens), 0),
        func.coalesce(func.sum(LedgerRow.completion_tokens), 0),
        func.coalesce(func.sum(LedgerRow.amount_micro_usd), 0),
    )
    if key_id is not None:
        query = query.where(LedgerRow.key_id == key_id)
    if account is not None:
        query = query.where(LedgerRow.account == account)
    if (start := since_datetime(since)) is not None:
        query = query.where(LedgerRow.finished_at >= start)
    if until is not None:
        query = query.where(LedgerRow.finished_at < to_storage(until))
    if cols:
        query = query.group_by(*cols).order_by(*cols)
    out = []
    for row in conn.execute(query):
        named = dict(zip([c.name for c in cols], row[: len(cols)], strict=True))
        counts = [int(v) for v in row[len(cols):]]
        if not cols and counts[0] == 0:
            continue
        out.append(
            UsageRow(
                day=named.get("day"),
                tier=named.get("tier"),
                key_id=named.get("key_id"),
                task_id=named.get("task_id"),
                requests=counts[0],
                prompt_tokens=counts[1],
                cached_tokens=counts[2],
                completion_tokens=counts[3],
                amount_micro_usd=counts[4],
            )
        )
    return out


@dataclass(frozen=True)
class InvoiceLine:
    tier: str  # the tier delivered
    input_price: int  # micro-USD per million tokens, as applied
    cached_input_price: int
    output_price: int
    requests: int
    input_tokens: int  # prompt tokens not served from cache
    cached_input_tokens: int
    output_tokens: int
    amount_micro_usd: int  # the sum of the requests' amounts (each rounded up to 1 micro-USD)
    task_id: str | None = None  # on an invoice by task (None: requests sent without one)

    def as_dict(self) -> dict:
        return {
            **asdict(self),
            "input_usd_per_mtok": usd(self.input_price),
            "cached_input_usd_per_mtok": usd(self.cached_input_price),
            "output_usd_per_mtok": usd(self.output_price),
            "amount_usd": usd(self.amount_micro_usd),
        }


CSV_FIELDS = [
    "account", "month", "tier", "requests", "input_tokens", "cached_input_tokens",
    "output_tokens", "input_usd_per_mtok", "cached_input_usd_per_mtok", "output_usd_per_mtok",
    "amount_usd", "amount_micro_usd",
]
CSV_FIELDS_BY_TASK = [*CSV_FIELDS[:2], "task_id", *CSV_FIELDS[2:]]


@dataclass(frozen=True)
class Invoice:
    account: str
    month: str  # "YYYY-MM"
    period_start: datetime  # UTC, inclusive
    period_end: datetime  # UTC, exclusive
    lines: tuple[InvoiceLine, ...]
    total_micro_usd: int
    currency: str = "USD"
    by_task: bool = False  # lines per task id and tier, not per tier alone

    @property
    def total_usd(self) -> str:
        return usd(self.total_micro_usd)

    def as_dict(self) -> dict:
        return {
            "account": self.account,
            "month": self.month,
            "currency": self.currency,
            "by": "task" if self.by_task else "tier",
            "period_start": self.period_start.isoformat(),
            "period_end": self.period_end.isoformat(),
            "lines": [line.as_dict() for line in self.lines],
            "total_micro_usd": self.total_micro_usd,
            "total_usd": self.total_usd,
        }

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=2) + "\n"

    def to_csv(self) -> str:
        buf = io.StringIO()
        fields = CSV_FIELDS_BY_TASK if self.by_task else CSV_FIELDS
        writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        for line in self.lines:
            d = line.as_dict()
            writer.writerow(
                {"account": self.account, "month": self.month}
                | {k: d[k] for k in fields if k in d}
            )
        writer.writerow(
            {
                "account": self.account,
                "month": self.month,
                "tier": "TOTAL",
                "requests": sum(line.requests for line in self.lines),
                "amount_usd": self.total_usd,
                "amount_micro_usd": self.total_micro_usd,
            }
        )
        return buf.getvalue()


def month_bounds(month: str) -> tuple[datetime, datetime]:
    match = re.fullmatch(r"(\d{4})-(\d{2})", month.strip())
    if not match or not 1 <= int(match[2]) <= 12:
        raise BillingInputError(f"month must look like YYYY-MM, got {month!r}")
    year, mon = int(match[1]), int(match[2])
    start = datetime(year, mon, 1, tzinfo=UTC)
    end = datetime(year + (mon == 12), mon % 12 + 1, 1, tzinfo=UTC)
    return start, end


def invoice(
    conn: Connection,
    account: str,
    month: str,
    tier_rank: Callable[[str], int] | None = None,
    by_task: bool = False,
) -> Invoice:
    start, end = month_bounds(month)
    price_cols = (
        LedgerRow.tier_delivered,
        LedgerRow.input_price,
        LedgerRow.cached_input_price,
        LedgerRow.output_price,
    )
    group_cols = (*price_cols, LedgerRow.task_id) if by_task else price_cols
    query = (
        select(
            *group_cols,
            func.count(LedgerRow.id),
            func.sum(LedgerRow.prompt_tokens - LedgerRow.cached_tokens),
            func.sum(LedgerRow.cached_tokens),
            func.sum(LedgerRow.completion_tokens),
            func.sum(LedgerRow.amount_micro_usd),
        )
        .where(LedgerRow.account == account)
        .where(LedgerRow.finished_at >= to_storage(start))
        .where(LedgerRow.finished_at < to_storage(end))
        .group_by(*group_cols)
    )
    n = len(group_cols)
    lines = []
    for r in conn.execute(query):
        prices = [int(v or 0) for v in r[1:4]]
        sums = [int(v or 0) for v in r[n:]]
        lines.append(
            InvoiceLine(
                tier=str(r[0]),
                input_price=prices[0],
                cached_input_price=prices[1],
                output_price=prices[2],
                requests=sums[0],
                input_tokens=sums[1],
                cached_input_tokens=sums[2],
                output_tokens=sums[3],
                amount_micro_usd=sums[4],
                task_id=r[4] if by_task else None,
            )
        )
    rank = tier_rank or (lambda _name: 0)
    lines.sort(
        key=lambda ln: (
            (ln.task_id is None, ln.task_id or "") if by_task else (False, ""),
            rank(ln.tier), ln.tier, ln.output_price, ln.input_price,
        )
    )
    return Invoice(
        account=account,
        month=f"{start.year:04d}-{start.month:02d}",
        period_start=start,
        period_end=end,
        lines=tuple(lines),
        total_micro_usd=sum(line.amount_micro_usd for line in lines),
        by_task=by_task,
    )
