"""API keys: "tf-" + 256 random bits, shown once, stored only as a SHA-256 hash."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime

from tokenfactory.billing.db import KeyRow, as_utc

KEY_PREFIX = "tf-"
SHOWN_CHARS = 11  # "tf-" + 8 random characters: enough to tell keys apart, useless to guess
_RAW_LEN = len(KEY_PREFIX) + 43  # token_urlsafe(32) is 43 characters
_URLSAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


@dataclass(frozen=True)
class ApiKey:
    key_id: str
    prefix: str  # the key's first characters, safe to show
    name: str
    account: str
    tier: str  # the key's default and highest tier
    rpm: int | None
    tpm: int | None
    budget_micro_usd: int | None
    revoked: bool
    created_at: datetime | None = None
    task_budget_micro_usd: int | None = None  # the most one task id may spend with this key

    @property
    def limited(self) -> bool:
        return self.rpm is not None or self.tpm is not None


def new_raw_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def new_key_id() -> str:
    return "key_" + secrets.token_hex(8)


def hash_key(raw_key: str) -> str:
    return hashlib.sha256(raw_key.encode("utf-8")).hexdigest()


def well_formed(raw_key: str) -> bool:
    """Cheap shape check before any lookup (a key this factory could have issued)."""
    return (
        len(raw_key) == _RAW_LEN
        and raw_key.startswith(KEY_PREFIX)
        and all(c in _URLSAFE for c in raw_key[len(KEY_PREFIX):])
    )


def key_from_row(row: KeyRow) -> ApiKey:
    return ApiKey(
        key_id=row.key_id,
        prefix=row.prefix,
        name=row.name,
        account=row.account,
        tier=row.tier,
        rpm=row.rpm,
        tpm=row.tpm,
        budget_micro_usd=row.budget_micro_usd,
        revoked=row.revoked_at is not None,
        created_at=as_utc(row.created_at),
        task_budget_micro_usd=row.task_budget_micro_usd,
    )
