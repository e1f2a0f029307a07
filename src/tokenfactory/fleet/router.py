"""Which replica serves a request: prefix affinity, then load, within the tier's pool.

Pure data in, a choice out (no Ray, no model), so the rule is tested on its own.

- Prefix: requests whose prompts start with the same tokens go to the same replica, where
  the prefix cache already holds those blocks. Rendezvous hashing picks it: every replica
  scores the prefix, the highest score wins, and a replica leaving or coming back moves only
  the prefixes it owned.
- Load: the prefix's replica is skipped when it is much busier than the least busy one
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
    prefix_tokens: int = 32  # the leading tokens that name a prefix
    # The prefix's replica keeps the request unless its load exceeds the least loaded
    # replica's by both this factor and this margin.
    overload_factor: float = 2.0
    overload_margin: int = 4
    pools: Mapping[str, tuple[int, ...]] = field(default_factory=dict)  # tier -> replicas
    mode: RoutingMode = "prefix"


def prefix_key(prompt_ids: Sequence[int], prefix_tokens: int) -> bytes | None:
    """The key of a prompt's leading tokens; None for a prompt too short to share one."""
    if prefix_tokens <= 0 or len(prompt_ids) < prefix_tokens:
        return None
    head = prompt_ids[:prefix_tokens]
    return b"t:" + b",".join(str(t).encode() for t in head)


def rendezvous_order(key: bytes, indices: Sequence[int]) -> list[int]:
    """Replica indices, best first, for this key (highest random weight)."""

    def score(index: int) -> bytes:
        return hashlib.blake2b(key + index.to_bytes(4, "little"), digest_size=8).digest()

    return sorted(indices, key=score, reverse=True)


def choose_replica(
    replicas: Sequence[ReplicaLoad],
    rules: RoutingRules,
    tier: str | None,
    prompt_ids: Sequence[int],
    cache_key: str | None = None,
    exclude: frozenset[int] = frozenset(),
    turn: int = 0,
) -> int:
    """The index of the replica that should serve this request.

    `cache_key` (a client's prompt-cache key) names the prefix when given; otherwise the
    prompt's first `rules.prefix_tokens` tokens do. `exclude`: replicas already tried.
    `turn`: the request's number, which round-robin routing takes modulo the replicas."""
    candidates = _candidates(replicas, rules, tier, exclude)
    if rules.mode == "round-robin":
        return _in_turn(candidates, turn, len(replicas))
    least = min(candidates, key=lambda r: (r.load, r.index))
    key = cache_key.encode() if cache_key else prefix_key(prompt_ids, rules.prefix_tokens)
    if key is None:
        return least.index
    by_index = {r.index: r for r in candidates}
    preferred = by_index[rendezvous_order(key, list(by_index))[0]]
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
