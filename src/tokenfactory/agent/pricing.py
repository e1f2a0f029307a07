"""What each response cost: its usage at the price of the tier that served it.

Prices come from the factory's `GET /v1/tiers` (integer micro-dollars per million tokens);
cached prompt tokens (`usage.prompt_tokens_details.cached_tokens`) are charged at the cached
input price, exactly as the factory's ledger does (`Tier.cost_micro_usd`).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from tokenfactory.agent.client import TurnUsage
from tokenfactory.bench.serve.tiers_info import catalog_from_endpoint
from tokenfactory.tiers import MICRO, OPENAI_ALIASES, Tier, TierCatalog


class PricingError(ValueError):
    pass


@dataclass(frozen=True)
class Pricing:
    """Per-tier prices, and the tier a request without an answer's `service_tier` is billed."""

    catalog: TierCatalog
    requested_tier: str | None

    @classmethod
    def from_tiers_body(cls, doc: dict, requested_tier: str | None) -> Pricing:
        try:
            catalog = catalog_from_endpoint(doc, "GET /v1/tiers")
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise PricingError(f"cannot read the endpoint's tiers: {exc}") from None
        return cls(catalog, requested_tier)

    @classmethod
    def flat(cls, spec: str) -> Pricing:
        """One price for everything: `INPUT:CACHED:OUTPUT` in USD per million tokens."""
        parts = spec.split(":")
        if len(parts) != 3:
            raise PricingError(f"bad prices {spec!r}: use INPUT:CACHED:OUTPUT (USD per Mtok)")
        try:
            i, c, o = (int(Decimal(p) * MICRO) for p in parts)
        except InvalidOperation:
            raise PricingError(f"bad prices {spec!r}: not numbers") from None
        tier = Tier("flat", 0, "--prices", i, c, o, 0.0, 1e9, False)
        return cls(TierCatalog((tier,), "flat", "flat"), None)

    def tier_for(self, served_tier: str | None) -> Tier:
        for name in (served_tier, self.requested_tier, self.catalog.default_tier):
            name = OPENAI_ALIASES.get(name, name) if name else None
            if name and name in self.catalog:
                return self.catalog[name]
        return self.catalog.tiers[0]

    def cost_micro_usd(self, usage: TurnUsage, served_tier: str | None) -> int:
        return self.tier_for(served_tier).cost_micro_usd(
            usage.prompt_tokens, usage.cached_tokens, usage.completion_tokens
        )

    def worst_case_micro_usd(self, prompt_tokens: int, max_tokens: int) -> int:
        """The most a request of this size could cost at the requested tier (no cache hit)."""
        return self.tier_for(None).cost_micro_usd(prompt_tokens, 0, max_tokens)
