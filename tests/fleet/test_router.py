"""The router's rule, from plain data: cached prefixes, cache keys, load, pools, replicas that
are down."""

from __future__ import annotations

import pytest

from tokenfactory.fleet.router import (
    NoReplicaError,
    ReplicaLoad,
    RoutingRules,
    choose_replica,
    rendezvous_order,
)

RULES = RoutingRules(min_match_tokens=64, match_slack_tokens=32, overload_factor=2.0,
                     overload_margin=4)


def idle(n: int) -> list[ReplicaLoad]:
    return [ReplicaLoad(i, available=True) for i in range(n)]


def test_the_replica_holding_the_longest_prefix_serves():
    assert choose_replica(idle(3), RULES, None, {0: 64, 2: 512}) == 2


def test_replicas_holding_about_as_much_share_the_work_by_load():
    # A long system prompt every session shares, cached on replicas 0 and 1.
    loads = [ReplicaLoad(0, True, running=3), ReplicaLoad(1, True, running=1), ReplicaLoad(2, True)]
    assert choose_replica(loads, RULES, None, {0: 608, 1: 608}) == 1
    assert choose_replica(loads, RULES, None, {0: 608, 1: 592}) == 1  # within the slack
    assert choose_replica(loads, RULES, None, {0: 800, 1: 608}) == 0  # its own history


def test_a_short_shared_prefix_is_no_reason_to_prefer_a_replica():
    # Every chat request starts with the template's few dozen tokens: the least busy serves.
    loads = [ReplicaLoad(0, True, running=2), ReplicaLoad(1, True)]
    assert choose_replica(loads, RULES, None, {0: 32}) == 1


def test_rendezvous_moves_only_the_keys_of_a_replica_that_left():
    keys = [f"session-{p}".encode() for p in range(300)]
    before = {k: rendezvous_order(k, [0, 1, 2, 3])[0] for k in keys}
    after = {k: rendezvous_order(k, [0, 1, 3])[0] for k in keys}
    moved = [k for k in before if before[k] != after[k]]
    assert moved and all(before[k] == 2 for k in moved)


def test_different_cache_keys_spread_over_the_replicas():
    picks = [choose_replica(idle(4), RULES, None, cache_key=f"run-{k}") for k in range(200)]
    assert all(picks.count(i) > 20 for i in range(4)), [picks.count(i) for i in range(4)]


def test_preferred_replica_keeps_the_request_while_not_much_busier():
    loads = [ReplicaLoad(0, True, running=6), ReplicaLoad(1, True, running=3)]
    assert choose_replica(loads, RULES, None, {0: 256}) == 0  # 6 <= 2 x 3


def test_much_busier_preferred_replica_gives_the_request_to_the_least_loaded():
    loads = [ReplicaLoad(0, True, waiting=8, running=4), ReplicaLoad(1, True, running=2)]
    assert choose_replica(loads, RULES, None, {0: 256}) == 1


def test_small_excess_is_not_much_busier_even_at_a_large_factor():
    loads = [ReplicaLoad(0, True, running=4), ReplicaLoad(1, True, running=0)]
    assert choose_replica(loads, RULES, None, {0: 256}) == 0  # excess 4 is not above 4


def test_without_a_prefix_the_least_loaded_replica_serves():
    loads = [
        ReplicaLoad(0, True, running=3),
        ReplicaLoad(1, True, waiting=1),
        ReplicaLoad(2, True, running=2),
    ]
    assert choose_replica(loads, RULES, None) == 1


def test_the_fronts_own_count_counts_when_the_stats_are_behind():
    loads = [ReplicaLoad(0, True, running=0, in_flight=5), ReplicaLoad(1, True, running=1)]
    assert choose_replica(loads, RULES, None) == 1


def test_replicas_that_are_down_or_already_tried_are_skipped():
    down = [ReplicaLoad(i, available=i != 1) for i in range(3)]
    assert choose_replica(down, RULES, None, {1: 512}) != 1
    assert choose_replica(idle(3), RULES, None, {1: 512}, exclude=frozenset({1})) != 1


def test_no_replica_up_is_an_error():
    with pytest.raises(NoReplicaError):
        choose_replica([ReplicaLoad(0, False), ReplicaLoad(1, False)], RULES, None)
    with pytest.raises(NoReplicaError):
        choose_replica(idle(1), RULES, None, exclude=frozenset({0}))


def test_a_cache_key_wins_over_the_cached_prefix():
    picks = {choose_replica(idle(4), RULES, None, {t % 4: 512}, cache_key="conv-1")
             for t in range(30)}
    assert len(picks) == 1


def test_pooled_tier_stays_in_its_pool_and_others_use_any_replica():
    rules = RoutingRules(pools={"ultra": (0,)})
    loads = [ReplicaLoad(0, True, running=9), ReplicaLoad(1, True), ReplicaLoad(2, True)]
    assert choose_replica(loads, rules, "ultra") == 0
    assert choose_replica(loads, rules, "standard") in (1, 2)
    assert choose_replica(loads, rules, "ultra", {1: 512}) == 0  # the pool, cache or not


def test_pooled_tier_falls_back_to_any_replica_when_its_pool_is_down():
    rules = RoutingRules(pools={"ultra": (0,)})
    loads = [ReplicaLoad(0, False), ReplicaLoad(1, True, running=3), ReplicaLoad(2, True)]
    assert choose_replica(loads, rules, "ultra") == 2


def test_round_robin_takes_replicas_in_turn_whatever_the_prefix_or_key():
    rules = RoutingRules(mode="round-robin")
    picks = [
        choose_replica(idle(3), rules, None, {0: 512}, cache_key="same", turn=t)
        for t in range(6)
    ]
    assert picks == [0, 1, 2, 0, 1, 2]


def test_round_robin_skips_replicas_that_are_down_or_tried_and_keeps_pools():
    rules = RoutingRules(mode="round-robin", pools={"ultra": (2,)})
    loads = [ReplicaLoad(0, True), ReplicaLoad(1, False), ReplicaLoad(2, True)]
    assert [choose_replica(loads, rules, None, turn=t) for t in range(3)] == [0, 2, 2]
    assert choose_replica(loads, rules, None, exclude=frozenset({0}), turn=0) == 2
    assert choose_replica(loads, rules, "ultra", turn=0) == 2
    with pytest.raises(NoReplicaError):
        choose_replica([ReplicaLoad(0, False)], rules, None)
