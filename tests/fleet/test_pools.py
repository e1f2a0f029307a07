"""`[pools]` in the tiers file: tier -> replica indices, checked against tiers and replicas."""

from __future__ import annotations

import pytest

from tokenfactory.fleet.pools import PoolError, load_pools, parse_pools
from tokenfactory.tiers import load_tiers

CATALOG = load_tiers(None, "cpu")
FAST = CATALOG.tiers[-1].name


def test_pools_map_tiers_to_replicas():
    assert parse_pools({"pools": {FAST: [1, 0, 1]}}, CATALOG, 2) == {FAST: (0, 1)}
    assert parse_pools({}, CATALOG, 2) == {}


@pytest.mark.parametrize(
    "pools, needle",
    [
        ({"nosuch": [0]}, "names tier 'nosuch'"),
        ({FAST: [2]}, "from 0 to 1"),
        ({FAST: []}, "from 0 to 1"),
        ({FAST: "0"}, "from 0 to 1"),
    ],
)
def test_bad_pools_say_what_is_wrong(pools, needle):
    with pytest.raises(PoolError, match=needle):
        parse_pools({"pools": pools}, CATALOG, 2, "tiers.toml")


def test_a_tiers_file_with_pools_still_loads_as_tiers(tmp_path):
    shipped = tmp_path / "shipped.toml"
    from importlib import resources

    shipped.write_text(
        resources.files("tokenfactory").joinpath("data/tiers.toml").read_text("utf-8")
        + f"\n[pools]\n{FAST} = [0]\n"
    )
    catalog = load_tiers(shipped, "cpu")
    assert load_pools(str(shipped), catalog, 3) == {FAST: (0,)}
    assert load_pools(None, catalog, 3) == {}
