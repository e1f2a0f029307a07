"""Which replicas hold which prompt prefixes: the front's picture of the replicas' caches.

Prompts are cut into blocks of `block_tokens`; a block's key hashes it together with every
block before it, so one key names one whole prefix. Each key remembers the replicas that were
sent a prompt with that prefix (and so computed, and cached, its KV). A request's match on a
replica is how many leading tokens of its prompt that replica holds.

An approximation of the caches, as a router keeps one: a replica's own cache may have evicted
a prefix since, and a replica that restarts is forgotten whole. The index keeps the most
recently used `capacity` keys.
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict
from collections.abc import Sequence

DEFAULT_BLOCK_TOKENS = 32


class PrefixIndex:
    def __init__(self, block_tokens: int = DEFAULT_BLOCK_TOKENS, capacity: int = 200_000):
        if block_tokens < 1 or capacity < 1:
            raise ValueError("block_tokens and capacity must be >= 1")
        self.block_tokens = block_tokens
        self.capacity = capacity
        self._holders: OrderedDict[bytes, set[int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._holders)

    def keys(self, prompt_ids: Sequence[int]) -> list[bytes]:
        """One key per whole block of the prompt, each naming the prefix up to its end."""
        out: list[bytes] = []
        digest = b""
        data = array("q", prompt_ids).tobytes()  # one pass; a long prompt's blocks are slices
        step = self.block_tokens * 8
        for start in range(0, len(data) - step + 1, step):
            digest = hashlib.blake2b(digest + data[start : start + step], digest_size=16).digest()
            out.append(digest)
        return out

    def matches(self, keys: Sequence[bytes]) -> dict[int, int]:
        """Replica -> leading prompt tokens it holds (replicas holding none are left out)."""
        matched: dict[int, int] = {}
        alive: set[int] | None = None  # replicas holding every block so far
        for n, key in enumerate(keys, 1):
            holders = self._holders.get(key)
            if not holders:
                break
            alive = set(holders) if alive is None else alive & holders
            if not alive:
                break
            self._holders.move_to_end(key)
            for r in alive:
                matched[r] = n * self.block_tokens
        return matched

    def record(self, keys: Sequence[bytes], replica: int) -> None:
        """`replica` was sent a prompt with these keys: it will hold them."""
        for key in keys:
            holders = self._holders.get(key)
            if holders is None:
                self._holders[key] = {replica}
            else:
                holders.add(replica)
                self._holders.move_to_end(key)
        while len(self._holders) > self.capacity:
            self._holders.popitem(last=False)

    def forget(self, replica: int) -> None:
        """`replica` lost its cache (it restarted)."""
        for key in list(self._holders):
            holders = self._holders[key]
            holders.discard(replica)
            if not holders:
                del self._holders[key]
