"""Whether this machine can cut commands off the network (probed once for the agent tests)."""

from __future__ import annotations

import pytest

from tokenfactory.agent.sandbox import NetworkIsolation

ISOLATION = NetworkIsolation.probe()
needs_isolation = pytest.mark.skipif(
    not ISOLATION.available, reason=f"no network isolation here: {ISOLATION.unavailable_reason}"
)
