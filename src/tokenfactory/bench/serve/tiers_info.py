"""Tier promises and prices for the run, and which API key each tier's requests use.

Sources, first found wins: the endpoint's `GET /v1/tiers` (tokenfactory), else the shipped
`tiers.toml` (or `--tiers-file`) at `--tier-preset`; then `--tier-target` and `--tier-price`
override single tiers (and may add tiers the catalog lacks).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from decimal import Decimal, InvalidOperation
from pathlib import Path
from urllib.parse import urlparse

import httpx

from tokenfactory.tiers import MICRO, Tier, TierCatalog, load_tiers

DEFAULT_KEYS_FILE = Path("~/.local/share/tokenfactory/local-keys.json").expanduser()


def catalog_from_endpoint(doc: dict, source: str) -> TierCatalog:
    """A catalog from a `GET /v1/tiers` body."""
    tiers: list[Tier] = []
    for item in sorted(doc["data"], key=lambda t: t.get("rank", 0)):
        prices = item.get("price_micro_usd_per_mtok") or {}
        tiers.append(
            Tier(
                name=item["name"],
                rank=int(item.get("rank", len(tiers))),
                description=str(item.get("description", "")),
                input_price=int(prices.get("input", 0)),
                cached_input_price=int(prices.get("cached_input", 0)),
                output_price=int(prices.get("output", 0)),
                tokens_per_s=float(item["tokens_per_s"]),
                ttft_s=float(item["ttft_s"]),
                sheddable=bool(item.get("sheddable", False)),
            )
        )
    default = doc.get("default_tier") or tiers[0].name
    return TierCatalog(tuple(tiers), default, str(doc.get("preset", "endpoint")), source)


def fetch_catalog(
    client: httpx.Client,
    base_url: str,
    preset: str,
    tiers_file: str | None,
    closed: dict[str, str] | None = None,
) -> TierCatalog:
    """The endpoint's tiers when it publishes them, else the tiers file at `preset`.
    `closed` receives {tier: reason} for tiers the endpoint says are not available now."""
    url = base_url.rstrip("/") + "/v1/tiers"
    try:
        resp = client.get(url)
        if resp.status_code == 200:
            doc = resp.json()
            if closed is not None:
                for item in doc["data"]:
                    if item.get("available") is False:
                        closed[item["name"]] = str(item.get("reason") or "not available")
            return catalog_from_endpoint(doc, url)
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        pass
    return load_tiers(tiers_file, preset)


def _usd_to_micro(text: str) -> int:
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise ValueError(f"bad price {text!r}") from None
    return int(value * MICRO)


def apply_overrides(catalog: TierCatalog, targets: list[str], prices: list[str]) -> TierCatalog:
    """`targets`: NAME=TOKENS_PER_S:TTFT_S; `prices`: NAME=INPUT:CACHED:OUTPUT (USD per Mtok)."""
    tiers = {t.name: t for t in catalog.tiers}

    def base(name: str) -> Tier:
        if name in tiers:
            return tiers[name]
        rank = max((t.rank for t in tiers.values()), default=-1) + 1
        return Tier(name, rank, "from the command line", 0, 0, 0, 1e-9, 1e9, False)

    for spec in targets:
        name, _, rest = spec.partition("=")
        try:
            tps, _, ttft = rest.partition(":")
            tiers[name] = replace(base(name), tokens_per_s=float(tps), ttft_s=float(ttft))
        except ValueError:
            raise ValueError(f"bad --tier-target {spec!r}: use NAME=TOKENS_PER_S:TTFT_S") from None
    for spec in prices:
        name, _, rest = spec.partition("=")
        parts = rest.split(":")
        if len(parts) != 3:
            raise ValueError(f"bad --tier-price {spec!r}: use NAME=INPUT:CACHED:OUTPUT")
        i, c, o = (_usd_to_micro(p) for p in parts)
        tiers[name] = replace(base(name), input_price=i, cached_input_price=c, output_price=o)
    ordered = tuple(sorted(tiers.values(), key=lambda t: t.rank))
    default = catalog.default_tier if catalog.default_tier in tiers else ordered[0].name
    return TierCatalog(ordered, default, catalog.preset, catalog.source)


def parse_mix(text: str | None) -> dict[str, float]:
    """`free=0.5,standard=0.3,super=0.2` -> normalised shares."""
    if not text:
        return {}
    shares: dict[str, float] = {}
    for part in text.split(","):
        name, _, share = part.strip().partition("=")
        try:
            shares[name.strip()] = float(share) if share else 1.0
        except ValueError:
            raise ValueError(f"bad --tier-mix entry {part!r}: use NAME=SHARE") from None
    total = sum(shares.values())
    if total <= 0 or any(v < 0 for v in shares.values()):
        raise ValueError("--tier-mix shares must be >= 0 and not all zero")
    return {k: v / total for k, v in shares.items()}


def is_loopback(base_url: str) -> bool:
    host = urlparse(base_url).hostname or ""
    return host in ("localhost", "::1") or host.startswith("127.")


@dataclass
class KeyRing:
    """Picks the bearer key for a request: the tier's own key, else the key of the slowest
    tier above it (a key may ask for its own tier or any lower one), else the general key."""

    api_key: str | None = None
    tier_keys: dict[str, str] = field(default_factory=dict)
    source: str = "none"

    def key_for(self, tier: str | None, catalog: TierCatalog) -> str | None:
        if not self.tier_keys:
            return self.api_key
        if tier is None:  # the key's default tier: the general key, else the default tier's
            if self.api_key:
                return self.api_key
            tier = catalog.default_tier
        if tier in self.tier_keys:
            return self.tier_keys[tier]
        rank = catalog[tier].rank if tier in catalog else -1
        above = [
            (catalog[n].rank, k)
            for n, k in self.tier_keys.items()
            if n in catalog and catalog[n].rank > rank
        ]
        return min(above)[1] if above else self.api_key

    @classmethod
    def build(cls, api_key: str | None, tier_keys_file: str | None, base_url: str) -> KeyRing:
        api_key = api_key or os.environ.get("OPENAI_API_KEY")
        path = Path(tier_keys_file).expanduser() if tier_keys_file else None
        if path is None and api_key is None and is_loopback(base_url):
            path = DEFAULT_KEYS_FILE if DEFAULT_KEYS_FILE.is_file() else None
        if path is None:
            return cls(api_key, {}, "--api-key" if api_key else "none")
        try:
            keys = json.loads(path.read_text("utf-8"))
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot read tier keys {path}: {exc}") from None
        if not isinstance(keys, dict):
            raise ValueError(f"tier keys {path}: expected a JSON object {{tier: key}}")
        return cls(api_key, {str(k): str(v) for k, v in keys.items()}, str(path))


@dataclass(frozen=True)
class TierSpeculation:
    """What the endpoint says about speculative decoding on one tier (`speculation` in its
    `GET /v1/tiers` entry): the proposer, the draft acceptance it measures, and whether the
    tier's promise holds only with speculation."""

    proposer: str
    acceptance: float | None
    relies_on_speculation: bool


def parse_tier_speculation(doc: dict) -> dict[str, TierSpeculation | None] | None:
    """{tier: its speculation, or None where it has none} from a `GET /v1/tiers` body; None
    when no tier carries the field at all (an endpoint that does not report speculation)."""
    items = doc.get("data") or []
    if not any(isinstance(t, dict) and "speculation" in t for t in items):
        return None
    out: dict[str, TierSpeculation | None] = {}
    for t in items:
        spec = t.get("speculation")
        if not isinstance(spec, dict):
            out[str(t.get("name"))] = None
            continue
        acc = spec.get("acceptance")
        out[str(t.get("name"))] = TierSpeculation(
            proposer=str(spec.get("proposer", "?")),
            acceptance=None if acc is None else float(acc),
            relies_on_speculation=bool(spec.get("relies_on_speculation", False)),
        )
    return out


def fetch_tier_speculation(
    client: httpx.Client, base_url: str
) -> dict[str, TierSpeculation | None] | None:
    """The endpoint's per-tier speculation now (see `parse_tier_speculation`); None when it
    has no `/v1/tiers` or does not report speculation there."""
    try:
        resp = client.get(base_url.rstrip("/") + "/v1/tiers")
        if resp.status_code != 200:
            return None
        return parse_tier_speculation(resp.json())
    except (httpx.HTTPError, ValueError, TypeError, AttributeError):
        return None
