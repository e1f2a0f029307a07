"""The router's rule, from plain data: prefix affinity, load, pools, replicas that are down."""

from __future__ import annotations

import pytest

from tokenfactory.fleet.router import (
    NoReplicaError,
    ReplicaLoad,
    RoutingRules,
    choose_replica,
    prefix_key,
    rendezvous_order,
)

RULES = RoutingRules(prefix_tokens=4, overload_factor=2.0, overload_margin=4)


def idle(n: int) -> list[ReplicaLoad]:
    return [ReplicaLoad(i, available=True) for i in range(n)]


def test_prefix_key_reads_only_the_leading_tokens():
    assert prefix_key([1, 2, 3, 4, 5], 4) == prefix_key([1, 2, 3, 4, 99, 100], 4)
    assert prefix_key([1, 2, 3, 4], 4) != prefix_key([1, 2, 3, 5], 4)
    assert prefix_key([1, 2, 3], 4) is None  # too short to share a prefix
    assert prefix_key([1, 2, 3, 4], 0) is None


def test_same_prefix_goes_to_the_same_replica_whatever_follows():
    choices = {choose_replica(idle(4), RULES, None, [7, 8, 9, 10, tail]) for tail in range(50)}
    assert len(choices) == 1


def test_different_prefixes_spread_over_the_replicas():
    choices = [choose_replica(idle(4), RULES, None, [p, p + 1, p + 2, p + 3]) for p in range(200)]
    counts = [choices.count(i) for i in range(4)]
    assert all(c > 20 for c in counts), counts


def test_rendezvous_moves_only_the_prefixes_of_a_replica_that_left():
    keys = [prefix_key([p, 1, 2, 3], 4) for p in range(300)]
    before = {k: rendezvous_order(k, [0, 1, 2, 3])[0] for k in keys if k}
    after = {k: rendezvous_order(k, [0, 1, 3])[0] for k in keys if k}
    moved = [k for k in before if before[k] != after[k]]
    assert moved and all(before[k] == 2 for k in moved)


def test_prefix_replica_keeps_the_request_while_not_much_busier():
    prompt = [5, 6, 7, 8, 9]
    home = choose_replica(idle(2), RULES, None, prompt)
    other = 1 - home
    loads = [ReplicaLoad(home, True, running=6), ReplicaLoad(other, True, running=3)]
    assert choose_replica(loads, RULES, None, prompt) == home  # 6 <= 2 x 3


def test_much_busier_prefix_replica_gives_the_request_to_the_least_loaded():
    prompt = [5, 6, 7, 8, 9]
    home = choose_replica(idle(2), RULES, None, prompt)
    other = 1 - home
    loads = [ReplicaLoad(home, True, waiting=8, running=4), ReplicaLoad(other, True, running=2)]
    assert choose_replica(loads, RULES, None, prompt) == other


def test_small_excess_is_not_much_busier_even_at_a_large_factor():
    prompt = [5, 6, 7, 8, 9]
    home = choose_replica(idle(2), RULES, None, prompt)
    loads = [ReplicaLoad(home, True, running=4), ReplicaLoad(1 - home, True, running=0)]
    assert choose_replica(loads, RULES, None, prompt) == home  # excess 4 is not above 4


def test_without_a_prefix_the_least_loaded_replica_serves():
    loads = [
        ReplicaLoad(0, True, running=3),
        ReplicaLoad(1, True, waiting=1),
        ReplicaLoad(2, True, running=2),
    ]
    assert choose_replica(loads, RULES, None, [1, 2]) == 1


def test_the_fronts_own_count_counts_when_the_stats_are_behind():
    loads = [ReplicaLoad(0, True, running=0, in_flight=5), ReplicaLoad(1, True, running=1)]
    assert choose_replica(loads, RULES, None, [1]) == 1


def test_replicas_that_are_down_or_already_tried_are_skipped():
    prompt = [5, 6, 7, 8, 9]
    home = choose_replica(idle(3), RULES, None, prompt)
    down = [ReplicaLoad(i, available=i != home) for i in range(3)]
    assert choose_replica(down, RULES, None, prompt) != home
    tried = choose_replica(idle(3), RULES, None, prompt, exclude=frozenset({home}))
    assert tried != home


def test_no_replica_up_is_an_error():
    with pytest.raises(NoReplicaError):
        choose_replica([ReplicaLoad(0, False), ReplicaLoad(1, False)], RULES, None, [1])
    with pytest.raises(NoReplicaError):
        choose_replica(idle(1), RULES, None, [1], exclude=frozenset({0}))


def test_a_cache_key_names_the_prefix_instead_of_the_tokens():
    rules = RoutingRules(prefix_tokens=4)
    picks = {
        choose_replica(idle(4), rules, None, [t, t, t, t], cache_key="conv-1") for t in range(30)
    }
    assert len(picks) == 1


def test_pooled_tier_stays_in_its_pool_and_others_use_any_replica():
    rules = RoutingRules(prefix_tokens=4, pools={"ultra": (0,)})
    loads = [ReplicaLoad(0, True, running=9), ReplicaLoad(1, True), ReplicaLoad(2, True)]
    assert choose_replica(loads, rules, "ultra", [1]) == 0
    assert choose_replica(loads, rules, "standard", [1]) in (1, 2)


def test_pooled_tier_falls_back_to_any_replica_when_its_pool_is_down():
    rules = RoutingRules(prefix_tokens=4, pools={"ultra": (0,)})
    loads = [ReplicaLoad(0, False), ReplicaLoad(1, True, running=3), ReplicaLoad(2, True)]
    assert choose_replica(loads, rules, "ultra", [1]) == 2


def test_a_shared_system_prompt_is_split_by_cache_key_but_not_without_one():
    rules = RoutingRules(prefix_tokens=4)
    system = [5, 6, 7, 8]  # every conversation starts with the same long system prompt
    by_tokens = {choose_replica(idle(4), rules, None, system + [k]) for k in range(40)}
    by_key = {
        choose_replica(idle(4), rules, None, system + [k], cache_key=f"run-{k}") for k in range(40)
    }
    assert len(by_tokens) == 1
    assert by_key == {0, 1, 2, 3}


def test_round_robin_takes_replicas_in_turn_whatever_the_prefix_or_key():
    rules = RoutingRules(prefix_tokens=4, mode="round-robin")
    picks = [
        choose_replica(idle(3), rules, None, [1, 2, 3, 4], cache_key="same", turn=t)
        for t in range(6)
    ]
    assert picks == [0, 1, 2, 0, 1, 2]


def test_round_robin_skips_replicas_that_are_down_or_tried_and_keeps_pools():
    rules = RoutingRules(mode="round-robin", pools={"ultra": (2,)})
    loads = [ReplicaLoad(0, True), ReplicaLoad(1, False), ReplicaLoad(2, True)]
    assert [choose_replica(loads, rules, None, [1], turn=t) for t in range(3)] == [0, 2, 2]
    assert choose_replica(loads, rules, None, [1], exclude=frozenset({0}), turn=0) == 2
    assert choose_replica(loads, rules, "ultra", [1], turn=0) == 2
    with pytest.raises(NoReplicaError):
        choose_replica([ReplicaLoad(0, False)], rules, None, [1])
