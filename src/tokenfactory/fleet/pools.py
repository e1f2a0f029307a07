"""Tier pools: an optional `[pools]` table in the tiers file binding tiers to replicas.

    [pools]
    ultra = [0]        # the paced tiers get replica 0 to themselves...
    super = [0]
    standard = [1, 2]  # ...tiers not named may use any replica

The router keeps a pooled tier on its replicas while any of them can serve.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from tokenfactory.tiers import TierCatalog


class PoolError(ValueError):
    """A `[pools]` table that cannot be used."""


def parse_pools(
    doc: dict, catalog: TierCatalog, replicas: int, source: str = "<dict>"
) -> dict[str, tuple[int, ...]]:
    table = doc.get("pools", {})
    if not isinstance(table, dict):
        raise PoolError(f"{source}: [pools] must be a table of tier = [replica, ...]")
    known = {t.name for t in catalog.tiers}
    pools: dict[str, tuple[int, ...]] = {}
    for tier, indices in table.items():
        if tier not in known:
            raise PoolError(f"{source}: [pools] names tier {tier!r}; tiers: {', '.join(known)}")
        if (
            not isinstance(indices, list)
            or not indices
            or not all(isinstance(i, int) and 0 <= i < replicas for i in indices)
        ):
            raise PoolError(
                f"{source}: pool of tier {tier!r} must list replica indices from 0 to "
                f"{replicas - 1}, got {indices!r}"
            )
        pools[tier] = tuple(sorted(set(indices)))
    return pools


def load_pools(
    tiers_file: str | None, catalog: TierCatalog, replicas: int
) -> dict[str, tuple[int, ...]]:
    """The pools of a tiers file (none for the shipped tiers or a file without [pools])."""
    if tiers_file is None:
        return {}
    with Path(tiers_file).open("rb") as f:
        doc = tomllib.load(f)
    return parse_pools(doc, catalog, replicas, tiers_file)
