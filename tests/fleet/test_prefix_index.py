"""The front's picture of which replica caches which prompt prefix."""

from __future__ import annotations

import pytest

from tokenfactory.fleet.prefix_index import PrefixIndex


def test_a_replica_matches_the_whole_blocks_it_was_sent_and_no_further():
    index = PrefixIndex(block_tokens=4)
    system = list(range(100, 112))  # three blocks every session shares
    index.record(index.keys(system + [1, 2, 3, 4, 5]), replica=0)
    assert index.matches(index.keys(system + [1, 2, 3, 4, 9, 9, 9, 9])) == {0: 16}
    assert index.matches(index.keys(system + [7, 7, 7, 7])) == {0: 12}
    assert index.matches(index.keys([0] + system)) == {}  # a different first block
    assert index.keys([1, 2, 3]) == []  # shorter than a block: nothing to share


def test_each_replica_matches_as_far_as_it_holds_the_prompt():
    index = PrefixIndex(block_tokens=4)
    system = list(range(8))
    index.record(index.keys(system + [50] * 8), replica=0)
    index.record(index.keys(system + [60] * 8), replica=1)
    index.record(index.keys(system + [50] * 8 + [51] * 4), replica=1)
    assert index.matches(index.keys(system + [50] * 8 + [51] * 4)) == {0: 16, 1: 20}


def test_a_restarted_replica_is_forgotten_and_old_prefixes_age_out():
    index = PrefixIndex(block_tokens=2, capacity=4)
    index.record(index.keys([1, 2, 3, 4]), replica=0)
    index.record(index.keys([1, 2, 3, 4]), replica=1)
    index.forget(0)
    assert index.matches(index.keys([1, 2, 3, 4])) == {1: 4}
    index.record(index.keys([9, 9, 8, 8, 7, 7]), replica=1)  # 3 more keys: 5 > 4
    assert len(index) == 4
    assert index.matches(index.keys([1, 2])) == {}  # the oldest went first
    index.forget(1)
    assert len(index) == 0
    with pytest.raises(ValueError):
        PrefixIndex(block_tokens=0)
