"""Everything one run needs before its first request: endpoint, key, model, prices, task id.

The endpoint and keys are found the way `tokenfactory bench serve` finds them: `--base-url`
(default: the local factory on 127.0.0.1:8000); `--tier-keys FILE` ({tier: key}) picks the key
of the tier asked for, else `--api-key` or $OPENAI_API_KEY, else, on a loopback endpoint, the
factory's own `local-keys.json` does.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from tokenfactory.agent.client import ChatClient, Endpoint, FactoryError
from tokenfactory.agent.pricing import Pricing, PricingError
from tokenfactory.bench.serve.runner import api_url
from tokenfactory.bench.serve.tiers_info import KeyRing, catalog_from_endpoint

LOCAL_FACTORY_URL = "http://127.0.0.1:8000"


def new_task_id() -> str:
    return f"task-{uuid.uuid4().hex}"


@dataclass(frozen=True)
class Connection:
    """How to reach the factory, as the user gave it (None: find it)."""

    base_url: str = LOCAL_FACTORY_URL
    api_key: str | None = None
    model: str | None = None
    tier: str | None = None  # sent as service_tier
    prices: str | None = None  # INPUT:CACHED:OUTPUT USD per Mtok, for endpoints without tiers
    tier_keys: str | None = None  # JSON file {tier: key}, e.g. a factory's local-keys.json


class SessionError(Exception):
    """The run cannot start (no endpoint, no key, no prices); the message says what to pass."""


@dataclass
class Session:
    client: ChatClient
    pricing: Pricing
    model: str
    key_source: str

    def close(self) -> None:
        self.client.close()


def open_session(conn: Connection, task_id: str, transport=None) -> Session:
    """Connect, pick the key and the model, read prices; SessionError when something lacks."""
    api = api_url(conn.base_url)
    probe = ChatClient(Endpoint(api, conn.api_key, conn.model), task_id, "", transport)
    try:
        tiers_doc = probe.tiers()
    except FactoryError as exc:
        raise SessionError(str(exc)) from None
    finally:
        probe.close()
    try:
        keys = KeyRing.build(conn.api_key, conn.tier_keys, conn.base_url)
    except ValueError as exc:
        raise SessionError(str(exc)) from None
    key = keys.api_key
    if tiers_doc is not None and keys.tier_keys:
        key = keys.key_for(conn.tier, catalog_from_endpoint(tiers_doc, "GET /v1/tiers"))
    try:
        if conn.prices:
            pricing = Pricing.flat(conn.prices)
        elif tiers_doc is not None:
            pricing = Pricing.from_tiers_body(tiers_doc, conn.tier)
        else:
            raise SessionError(
                f"{api}/tiers publishes no prices, so spending cannot be limited; pass "
                "--prices INPUT:CACHED:OUTPUT (USD per million tokens)"
            )
    except PricingError as exc:
        raise SessionError(str(exc)) from None
    endpoint = Endpoint(api, key, conn.model, conn.tier)
    client = ChatClient(endpoint, task_id, prompt_cache_key=f"agent-{task_id}",
                        transport=transport)
    try:
        model = client.model()
    except FactoryError as exc:
        client.close()
        raise SessionError(str(exc)) from None
    return Session(client, pricing, model, keys.source)
