"""Key operations of `Billing`: bootstrap, create, list, find, revoke, authenticate, tiers.

A mixin over the state `Billing` owns (catalog, engine, data directory, lock, auth cache), so
the service module keeps to admission and money.
"""

from __future__ import annotations

import json
import logging
import os
import time
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from tokenfactory.billing import keys as keymod
from tokenfactory.billing.db import KeyRow, Meta, as_utc, table, utcnow
from tokenfactory.billing.errors import (
    BillingInputError,
    InvalidApiKeyError,
    KeyNotFoundError,
    TierNotAllowedError,
)
from tokenfactory.billing.keys import ApiKey
from tokenfactory.billing.ledger import now_utc

if TYPE_CHECKING:
    import threading

    from sqlalchemy.engine import Engine

    from tokenfactory.tiers import TierCatalog

log = logging.getLogger("tokenfactory.billing")

LOCAL_ACCOUNT = "local"
LOCAL_KEYS_FILE = "local-keys.json"
_BOOTSTRAP_MARK = "local_keys_bootstrapped_at"


class Unchanged:
    """The default of `update_key`'s fields: leave this one as it is."""


UNCHANGED = Unchanged()


class KeyMethods:
    catalog: TierCatalog
    engine: Engine
    data_dir: Path
    _lock: threading.RLock
    _auth: dict[str, tuple[ApiKey, float]]
    _auth_ttl: float

    # Billing provides these: a connection, and a transaction under the one writer's lock.
    def _session(self) -> AbstractContextManager[Connection]:
        raise NotImplementedError

    def _write(self) -> AbstractContextManager[Connection]:
        raise NotImplementedError

    @staticmethod
    def _keys_where(conn: Connection, *conds) -> list[KeyRow]:
        from sqlalchemy.orm import Session

        with Session(bind=conn) as session:
            rows = session.execute(select(KeyRow).where(*conds)).scalars().all()
            session.expunge_all()
            return list(rows)

    # ---- keys ----------------------------------------------------------------------------

    def bootstrap_local_keys(self) -> dict[str, str] | None:
        """First start only: one key per tier for account "local", written to
        <data_dir>/local-keys.json (mode 0600). None when this database already has them."""
        raw_keys: dict[str, str] = {}
        try:
            with self._write() as conn:
                conn.execute(
                    table(Meta).insert().values(
                        name=_BOOTSTRAP_MARK, value=now_utc().isoformat()
                    )
                )
                for tier in self.catalog.tiers:
                    raw = keymod.new_raw_key()
                    conn.execute(
                        table(KeyRow).insert().values(
                            **self._key_values(raw, f"local-{tier.name}", LOCAL_ACCOUNT,
                                               tier.name, None, None, None)
                        )
                    )
                    raw_keys[tier.name] = raw
                # written before the commit: if the commit fails the next start redoes it all
                _write_private(self.data_dir / LOCAL_KEYS_FILE, json.dumps(raw_keys, indent=2))
        except IntegrityError:
            return None
        log.info("created %d local API keys in %s", len(raw_keys), self.data_dir / LOCAL_KEYS_FILE)
        return raw_keys

    def create_key(
        self,
        name: str,
        tier: str,
        account: str | None = None,
        budget_micro_usd: int | None = None,
        rpm: int | None = None,
        tpm: int | None = None,
        task_budget_micro_usd: int | None = None,
    ) -> tuple[ApiKey, str]:
        """A new key; the raw key is returned here once and never stored.

        `task_budget_micro_usd`: the most requests carrying one task id may spend with it."""
        name = (name or "").strip()
        if not name or len(name) > 128:
            raise BillingInputError("a key needs a name of 1 to 128 characters")
        if tier not in self.catalog:
            raise BillingInputError(
                f"unknown tier {tier!r}; use one of: {', '.join(self.catalog.names)}"
            )
        account = (account or name).strip()
        if not account or len(account) > 128:
            raise BillingInputError("an account name has 1 to 128 characters")
        _check_budgets(budget_micro_usd, task_budget_micro_usd)
        for what, value in (("rpm", rpm), ("tpm", tpm)):
            if value is not None and value < 1:
                raise BillingInputError(f"{what} must be >= 1 (leave it out for no limit)")
        raw = keymod.new_raw_key()
        values = self._key_values(raw, name, account, tier, budget_micro_usd, rpm, tpm)
        values["task_budget_micro_usd"] = task_budget_micro_usd
        with self._write() as conn:
            conn.execute(table(KeyRow).insert().values(**values))
        key = ApiKey(
            key_id=values["key_id"],
            prefix=values["prefix"],
            name=name,
            account=account,
            tier=tier,
            rpm=rpm,
            tpm=tpm,
            budget_micro_usd=budget_micro_usd,
            revoked=False,
            created_at=as_utc(values["created_at"]),
            task_budget_micro_usd=task_budget_micro_usd,
        )
        log.info("created API key %s (%s…) for account %s", key.key_id, key.prefix, account)
        return key, raw

    @staticmethod
    def _key_values(raw, name, account, tier, budget, rpm, tpm) -> dict:
        return {
            "key_id": keymod.new_key_id(),
            "prefix": raw[: keymod.SHOWN_CHARS],
            "key_hash": keymod.hash_key(raw),
            "name": name,
            "account": account,
            "tier": tier,
            "rpm": rpm,
            "tpm": tpm,
            "budget_micro_usd": budget,
            "created_at": utcnow(),
            "revoked_at": None,
        }

    def list_keys(self, account: str | None = None) -> list[ApiKey]:
        conds = [KeyRow.account == account] if account is not None else []
        with self._session() as conn:
            rows = self._keys_where(conn, *conds)
        rows.sort(key=lambda r: (r.created_at, r.key_id))
        return [keymod.key_from_row(r) for r in rows]

    def find_key(self, key_id_or_prefix: str) -> ApiKey:
        """A key by its id, its shown prefix (or a unique start of it), or the raw key itself."""
        ident = (key_id_or_prefix or "").strip()
        if not ident:
            raise KeyNotFoundError("give a key id or prefix")
        with self._session() as conn:
            if keymod.well_formed(ident):
                rows = self._keys_where(conn, KeyRow.key_hash == keymod.hash_key(ident))
            else:
                rows = self._keys_where(conn, KeyRow.key_id == ident)
                if not rows and ident.startswith(keymod.KEY_PREFIX) and len(ident) >= 6:
                    rows = self._keys_where(conn, KeyRow.prefix.startswith(ident, autoescape=True))
        if not rows:
            raise KeyNotFoundError(f"no API key with id or prefix {ident!r}")
        if len(rows) > 1:
            raise KeyNotFoundError(f"{len(rows)} keys start with {ident!r}; use the key id")
        return keymod.key_from_row(rows[0])

    def update_key(
        self,
        key_id_or_prefix: str,
        *,
        budget_micro_usd: int | None | Unchanged = UNCHANGED,
        task_budget_micro_usd: int | None | Unchanged = UNCHANGED,
    ) -> ApiKey:
        """Change a key's budget or budget per task (None: no limit); a running server sees
        the change within its key cache's few seconds."""
        key = self.find_key(key_id_or_prefix)
        values = {
            name: value
            for name, value in (
                ("budget_micro_usd", budget_micro_usd),
                ("task_budget_micro_usd", task_budget_micro_usd),
            )
            if not isinstance(value, Unchanged)
        }
        _check_budgets(values.get("budget_micro_usd"), values.get("task_budget_micro_usd"))
        if values:
            with self._write() as conn:
                conn.execute(update(KeyRow).where(KeyRow.key_id == key.key_id).values(**values))
            log.info("updated API key %s (%s…): %s", key.key_id, key.prefix, values)
        self._forget_cached(key.key_id)
        return self.find_key(key.key_id)

    def _forget_cached(self, key_id: str) -> None:
        with self._lock:
            for digest in [h for h, (k, _) in self._auth.items() if k.key_id == key_id]:
                del self._auth[digest]

    def revoke_key(self, key_id_or_prefix: str) -> ApiKey:
        key = self.find_key(key_id_or_prefix)
        if not key.revoked:
            with self._write() as conn:
                conn.execute(
                    update(KeyRow).where(KeyRow.key_id == key.key_id).values(revoked_at=utcnow())
                )
            log.info("revoked API key %s (%s…)", key.key_id, key.prefix)
        self._forget_cached(key.key_id)
        return self.find_key(key.key_id)

    def authenticate(self, raw_key: str | None) -> ApiKey:
        """The key behind a raw API key; InvalidApiKeyError when missing, unknown or revoked.

        Cached in memory by hash; an entry is re-read from the database after a few seconds,
        so a revocation made by another process (the CLI) takes effect quickly.
        """
        if not raw_key:
            raise InvalidApiKeyError(
                "You didn't provide an API key. Send it as 'Authorization: Bearer tf-...'."
            )
        if not keymod.well_formed(raw_key):
            raise InvalidApiKeyError("Incorrect API key provided.")
        digest = keymod.hash_key(raw_key)
        now = time.monotonic()
        cached = self._auth.get(digest)
        if cached is not None and cached[1] > now:
            key = cached[0]
        else:
            with self._session() as conn:
                rows = self._keys_where(conn, KeyRow.key_hash == digest)
            if not rows:
                raise InvalidApiKeyError("Incorrect API key provided.")
            key = keymod.key_from_row(rows[0])
            with self._lock:
                self._auth[digest] = (key, now + self._auth_ttl)
        if key.revoked:
            raise InvalidApiKeyError("This API key has been revoked.")
        return key

    def allowed_tiers(self, key: ApiKey) -> list[str]:
        if key.tier not in self.catalog:
            return []
        rank = self.catalog[key.tier].rank
        return [t.name for t in self.catalog.tiers if t.rank <= rank]

    def check_tier(self, key: ApiKey, tier: str) -> None:
        """A key may use its own tier and any slower one."""
        allowed = self.allowed_tiers(key)
        if tier not in allowed:
            raise TierNotAllowedError(tier, allowed, key.tier)


def _check_budgets(budget: int | None, task_budget: int | None) -> None:
    if budget is not None and budget < 0:
        raise BillingInputError("a budget must be >= 0")
    if task_budget is not None and task_budget < 0:
        raise BillingInputError("a budget per task must be >= 0")


def _write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read (0600), replacing any earlier one."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, text.encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)

