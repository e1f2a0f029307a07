"""Budget holds in the database: the `money` counters every front reserves against.

A key's row has task_id "" (task ids are never empty); a task's row is (key_id, task_id).
Reserving is one upsert whose update only happens while spent + reserved + amount stays
within the budget, so two fronts can never both take the last of a budget: the database
serializes the updates of one row, and each sees the other's committed amount.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.engine import Connection
from sqlalchemy.sql.dml import Insert

from tokenfactory.billing.db import MoneyRow, table

WHOLE_KEY = ""  # the task_id of a key's own counter


@dataclass(frozen=True)
class Counter:
    spent_micro_usd: int
    reserved_micro_usd: int

    @property
    def committed_micro_usd(self) -> int:
        return self.spent_micro_usd + self.reserved_micro_usd


def _insert(conn: Connection, values: dict) -> Insert:
    """INSERT for this dialect, with its ON CONFLICT clause available."""
    money = table(MoneyRow)
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(money).values(**values)
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert(money).values(**values)


def try_reserve(
    conn: Connection, key_id: str, task_id: str, amount: int, budget: int | None
) -> bool:
    """Add `amount` to the counter's reserved unless that takes it past `budget` (None: no
    budget); True when it was added. Part of the caller's transaction."""
    if budget is not None and amount > budget:
        return False
    money = table(MoneyRow)
    stmt = _insert(
        conn,
        {"key_id": key_id, "task_id": task_id, "spent_micro_usd": 0, "reserved_micro_usd": amount},
    )
    update_where = None
    if budget is not None:
        update_where = (
            money.c.spent_micro_usd + money.c.reserved_micro_usd + amount <= budget
        )
    stmt = stmt.on_conflict_do_update(  # type: ignore[attr-defined]
        index_elements=[money.c.key_id, money.c.task_id],
        set_={"reserved_micro_usd": money.c.reserved_micro_usd + amount},
        where=update_where,
    )
    # RETURNING rather than rowcount: drivers disagree on an upsert's rowcount
    return conn.execute(stmt.returning(money.c.key_id)).first() is not None


def settle(
    conn: Connection, key_id: str, task_id: str, *, released: int, billed: int
) -> None:
    """Release `released` from reserved and add `billed` to spent, in the caller's transaction
    (the one that writes the ledger row)."""
    money = table(MoneyRow)
    stmt = _insert(
        conn,
        {
            "key_id": key_id,
            "task_id": task_id,
            "spent_micro_usd": billed,
            "reserved_micro_usd": -released,
        },
    )
    stmt = stmt.on_conflict_do_update(  # type: ignore[attr-defined]
        index_elements=[money.c.key_id, money.c.task_id],
        set_={
            "reserved_micro_usd": money.c.reserved_micro_usd - released,
            "spent_micro_usd": money.c.spent_micro_usd + billed,
        },
    )
    conn.execute(stmt)


def read(conn: Connection, key_id: str, task_id: str = WHOLE_KEY) -> Counter:
    money = table(MoneyRow)
    row = conn.execute(
        select(money.c.spent_micro_usd, money.c.reserved_micro_usd).where(
            money.c.key_id == key_id, money.c.task_id == task_id
        )
    ).first()
    return Counter(0, 0) if row is None else Counter(int(row[0]), int(row[1]))
