"""What the server tells the scheduler about a request (no server process needed)."""

from __future__ import annotations

import pytest

from tokenfactory.server.factory import request_terms
from tokenfactory.tiers import load_tiers

CATALOG = load_tiers(preset="cpu")


@pytest.mark.parametrize(
    ("service_tier", "downgradable"),
    [(None, True), ("auto", True), ("high", False), ("priority", False), ("default", False)],
)
def test_only_auto_requests_may_start_at_a_slower_tier(service_tier, downgradable):
    terms = request_terms(CATALOG, CATALOG["high"], service_tier, received_at=12.5)
    assert terms.tier == "high" and terms.received_at == 12.5
    assert terms.fallbacks  # the slower tiers it can still be billed at
    assert terms.downgradable is downgradable
