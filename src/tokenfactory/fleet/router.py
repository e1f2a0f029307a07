"""Which replica serves a request: prefix affinity, then load, within the tier's pool.

Pure data in, a choice out (no Ray, no model), so the rule is tested on its own.

- Prefix: a request goes where the longest leading part of its prompt is already cached
  (`PrefixIndex` says how many tokens each replica holds); among the replicas holding about
  as much, the least busy. A prefix too short to matter (a chat template's few tokens that
  every request shares) counts as none, so it does not pull all traffic onto one replica.
- Cache key: a client's `prompt_cache_key` names a session; rendezvous hashing puts each key
  on one replica (every replica scores the key, the highest wins, and a replica leaving or
  coming back moves only the keys it owned).
- Load: the preferred replica is skipped when it is much busier than the least busy one
  (a cache hit does not pay for a long queue); requests without a usable prefix go to the
  least busy replica.
- Pools: a tier may be bound to some replicas (say a fast pool for the paced tiers); when
  none of them can take work, any replica serves rather than none.

Round-robin routing (the baseline to compare against) ignores prefixes and keys and takes
the replicas in turn, skipping those that are down, within the same pools.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

RoutingMode = Literal["prefix", "round-robin"]
ROUTING_MODES: tuple[RoutingMode, ...] = ("prefix", "round-robin")


class NoReplicaError(RuntimeError):
    """No replica can take a request now (all of them are down or restarting)."""


@dataclass(frozen=True)
class ReplicaLoad:
    """What the router knows of one replica."""

    index: int
    available: bool  # alive and set up; False while it is down or restarting
    waiting: int = 0  # from its last stats
    running: int = 0
    in_flight: int = 0  # sent by this front and not yet ended (fresher than the stats)

    @property
    def load(self) -> int:
        return max(self.waiting + self.running, self.in_flight)


@dataclass(frozen=True)
class RoutingRules:
    # A cached prefix shorter than this is no reason to prefer a replica (chat templates
    # give every request the same first few dozen tokens).
    min_match_tokens: int = 64
    # Replicas holding within this many tokens of the longest match count as holding it.
    match_slack_tokens: int = 32
    # The prefix's replica keeps the request unless its load exceeds the least loaded
    # replica's by both this factor and this margin.
    overload_factor: float = 2.0
    overload_margin: int = 4
    pools: Mapping[str, tuple[int, ...]] = field(default_factory=dict)  # tier -> replicas
    mode: RoutingMode = "prefix"


def rendezvous_order(key: bytes, indices: Sequence[int]) -> list[int]:
    """Replica indices, best first, for this key (highest random weight)."""

    def score(index: int) -> bytes:
        return hashlib.blake2b(key + index.to_bytes(4, "little"), digest_size=8).digest()

    return sorted(indices, key=score, reverse=True)


def choose_replica(
    replicas: Sequence[ReplicaLoad],
    rules: RoutingRules,
    tier: str | None,
    cached: Mapping[int, int] | None = None,
    cache_key: str | None = None,
    exclude: frozenset[int] = frozenset(),
    turn: int = 0,
) -> int:
    """The index of the replica that should serve this request.

    `cached`: replica -> leading prompt tokens it holds (`PrefixIndex.matches`).
    `cache_key` (a client's prompt-cache key) names the session when given, and wins over
    the prompt. `exclude`: replicas already tried. `turn`: the request's number, which
    round-robin routing takes modulo the replicas."""
    candidates = _candidates(replicas, rules, tier, exclude)
    if rules.mode == "round-robin":
        return _in_turn(candidates, turn, len(replicas))
    least = min(candidates, key=lambda r: (r.load, r.index))
    by_index = {r.index: r for r in candidates}
    if cache_key:
        preferred = by_index[rendezvous_order(cache_key.encode(), list(by_index))[0]]
    else:
        held = {i: n for i, n in (cached or {}).items() if i in by_index}
        best = max(held.values(), default=0)
        if best < rules.min_match_tokens:
            return least.index
        near = [by_index[i] for i, n in held.items() if n >= best - rules.match_slack_tokens]
        preferred = min(near, key=lambda r: (r.load, r.index))
    if _much_busier(preferred, least, rules):
        return least.index
    return preferred.index


def _in_turn(candidates: Sequence[ReplicaLoad], turn: int, count: int) -> int:
    """The first candidate at or after replica `turn` (modulo all `count` replicas), so a
    replica that is down hands its turns to the next one up."""
    indices = sorted(r.index for r in candidates)
    start = turn % count
    return next((i for i in indices if i >= start), indices[0])


def _candidates(
    replicas: Sequence[ReplicaLoad],
    rules: RoutingRules,
    tier: str | None,
    exclude: frozenset[int],
) -> list[ReplicaLoad]:
    usable = [r for r in replicas if r.available and r.index not in exclude]
    if not usable:
        raise NoReplicaError("no engine replica is available")
    pool = rules.pools.get(tier) if tier is not None else None
    if pool:
        in_pool = [r for r in usable if r.index in pool]
        if in_pool:
            return in_pool
    return usable


def _much_busier(preferred: ReplicaLoad, least: ReplicaLoad, rules: RoutingRules) -> bool:
    excess = preferred.load - least.load
    return excess > rules.overload_margin and preferred.load > least.load * rules.overload_factor
