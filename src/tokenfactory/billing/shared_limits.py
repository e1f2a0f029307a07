"""Rate-limit buckets shared by every front through PostgreSQL: one row per key.

Admission locks the key's row (SELECT ... FOR UPDATE) inside the admission's transaction,
refills and checks it with the same `TokenBucket` arithmetic as the in-memory buckets, and
writes it back; a refusal (budget, duplicate id) rolls the take back with the transaction.
Levels are refilled against the wall clock (seconds since the epoch), the one clock fronts on
different hosts share.
"""

from __future__ import annotations

import time

from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import Connection, Engine

from tokenfactory.billing.db import RateBucketRow, table
from tokenfactory.billing.keys import ApiKey
from tokenfactory.billing.limits import Clock, KeyLimits, TokenBucket, check_rate


class DatabaseRateLimits:
    def __init__(self, engine: Engine, clock: Clock = time.time):
        self._engine = engine
        self._clock = clock

    def _load(self, conn: Connection, key: ApiKey, *, lock: bool) -> KeyLimits:
        """The key's buckets refilled to now (a full pair when the key has no row yet)."""
        buckets = table(RateBucketRow)
        now = self._clock()
        query = select(buckets).where(buckets.c.key_id == key.key_id)
        if lock:
            query = query.with_for_update()
        row = conn.execute(query).first()
        if row is None and lock:  # the key's first admission anywhere: a full pair
            conn.execute(
                pg_insert(buckets)
                .values(
                    key_id=key.key_id,
                    requests_level=float(key.rpm or 0),
                    tokens_level=float(key.tpm or 0),
                    updated=now,
                )
                .on_conflict_do_nothing(index_elements=[buckets.c.key_id])
            )
            row = conn.execute(query).first()  # ours, or the one a front inserted first
        limits = KeyLimits.for_key(key.rpm, key.tpm, now)
        if row is not None:
            # capacities follow the key (its rpm/tpm may have been changed); levels the row
            if limits.requests is not None:
                limits.requests = TokenBucket(
                    limits.requests.capacity,
                    min(limits.requests.capacity, row.requests_level),
                    row.updated,
                )
            if limits.tokens is not None:
                limits.tokens = TokenBucket(
                    limits.tokens.capacity, min(limits.tokens.capacity, row.tokens_level),
                    row.updated,
                )
        limits.refill(now)
        return limits

    def _store(self, conn: Connection, key: ApiKey, limits: KeyLimits) -> None:
        buckets = table(RateBucketRow)
        stamp = next(
            (b.updated for b in (limits.requests, limits.tokens) if b is not None), self._clock()
        )
        conn.execute(
            update(buckets)
            .where(buckets.c.key_id == key.key_id)
            .values(
                requests_level=limits.requests.level if limits.requests is not None else 0.0,
                tokens_level=limits.tokens.level if limits.tokens is not None else 0.0,
                updated=stamp,
            )
        )

    def take(self, conn: Connection, key: ApiKey, tokens: int) -> dict[str, str]:
        if not key.limited:
            return {}
        limits = self._load(conn, key, lock=True)
        check_rate(limits, tokens)
        limits.take(tokens)
        self._store(conn, key, limits)
        return limits.headers()

    def undo(self, key: ApiKey, tokens: int) -> None:
        """Nothing to do: the take was part of the transaction that rolled back."""

    def give_back(self, conn: Connection, key: ApiKey, tokens: int) -> None:
        if not key.limited or key.tpm is None or tokens <= 0:
            return
        limits = self._load(conn, key, lock=True)
        assert limits.tokens is not None
        limits.tokens.give_back(tokens)
        self._store(conn, key, limits)

    def headers(self, key: ApiKey) -> dict[str, str]:
        with self._engine.connect() as conn:
            return self._load(conn, key, lock=False).headers()
