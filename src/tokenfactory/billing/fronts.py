"""Fronts: the server processes admitting requests on one database, each known by a row it
keeps fresh (a heartbeat). A reservation names the front that holds it; when that front is
gone its reservations are reconciled by another.

A front is gone when its row is missing (it closed), its heartbeat is older than the lease,
or it ran on this host under a process id that no longer exists (a kill -9 seen at once by
the next start on the same machine). Heartbeats use the wall clock: hosts must keep it in
sync (NTP), well within the lease.
"""

from __future__ import annotations

import os
import secrets
import socket
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, exists, insert, or_, select, update
from sqlalchemy.engine import Connection

from tokenfactory.billing.db import FrontRow, ReservationRow, table


@dataclass(frozen=True)
class FrontIdentity:
    front_id: str
    host: str
    pid: int

    @classmethod
    def of_this_process(cls) -> FrontIdentity:
        host = socket.gethostname()[:200]
        pid = os.getpid()
        return cls(f"{host[:60]}:{pid}:{secrets.token_hex(4)}", host, pid)


def register(conn: Connection, me: FrontIdentity, now: datetime) -> None:
    conn.execute(
        insert(table(FrontRow)).values(
            front_id=me.front_id, host=me.host, pid=me.pid, started_at=now, heartbeat_at=now
        )
    )


def heartbeat(conn: Connection, me: FrontIdentity, now: datetime) -> None:
    """Refresh this front's row; put it back if another front took it for dead and removed it."""
    fronts = table(FrontRow)
    updated = conn.execute(
        update(fronts).where(fronts.c.front_id == me.front_id).values(heartbeat_at=now)
    ).rowcount
    if updated == 0:
        register(conn, me, now)


def unregister(conn: Connection, me: FrontIdentity) -> None:
    fronts = table(FrontRow)
    conn.execute(delete(fronts).where(fronts.c.front_id == me.front_id))


def pid_is_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def gone_fronts(
    conn: Connection, me: FrontIdentity, now: datetime, lease: timedelta, *, trust_lease: bool
) -> list[str | None]:
    """Front ids holding reservations that no live front holds (None: rows from before fronts
    were recorded). `trust_lease`: whether an old heartbeat alone is proof of death (see
    `Billing._upkeep` for when it is not)."""
    res, fronts = table(ReservationRow), table(FrontRow)
    holders = {
        r[0]
        for r in conn.execute(
            select(res.c.front_id).where(
                or_(res.c.front_id.is_(None), res.c.front_id != me.front_id)
            ).distinct()
        )
    }
    if not holders:
        return []
    known = {
        r.front_id: r
        for r in conn.execute(
            select(fronts).where(fronts.c.front_id.in_([h for h in holders if h is not None]))
        )
    }
    gone: list[str | None] = []
    for holder in holders:
        row = known.get(holder) if holder is not None else None
        if row is None:
            gone.append(holder)
        elif row.host == me.host and pid_is_gone(row.pid):
            gone.append(holder)
        elif trust_lease and row.heartbeat_at < now - lease:
            gone.append(holder)
    return gone


def forget(conn: Connection, front_id: str) -> None:
    """Remove a gone front's row once none of its reservations is left."""
    fronts, res = table(FrontRow), table(ReservationRow)
    left = conn.execute(select(res.c.request_id).where(res.c.front_id == front_id).limit(1))
    if left.first() is None:
        conn.execute(delete(fronts).where(fronts.c.front_id == front_id))


def forget_silent(conn: Connection, me: FrontIdentity, now: datetime, lease: timedelta) -> int:
    """Remove the rows of fronts silent for longer than the lease that hold nothing (a command
    line tool killed before it closed, say); returns how many."""
    fronts, res = table(FrontRow), table(ReservationRow)
    return conn.execute(
        delete(fronts).where(
            fronts.c.front_id != me.front_id,
            fronts.c.heartbeat_at < now - lease,
            ~exists().where(res.c.front_id == fronts.c.front_id),
        )
    ).rowcount
