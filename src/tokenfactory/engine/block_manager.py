"""BlockManager: paged KV block accounting with automatic prefix caching.

Block ids 0..num_blocks-1 index the KV cache tensors the model runner owns; this module only
decides which sequence may use which block. A full block whose tokens have been computed gets
a chained content hash and is registered so that later sequences with the same prefix can
reuse its K/V instead of recomputing them. Only full blocks are shared: a sequence always
writes new tokens into its own last (partial or fresh) block.

A block is in exactly one of three states:
  free       ref count 0, no hash               -> `_free` (FIFO)
  evictable  ref count 0, hash, content kept    -> `_evictable` (LRU, oldest first)
  in use     ref count > 0 (hash or not)
"""

from __future__ import annotations

from collections import Counter, OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass

from tokenfactory.engine.sequence import Sequence


def hash_block_tokens(parent_hash: int | None, token_ids: tuple[int, ...]) -> int:
    """Chained content hash of one full block.

    Python's tuple-of-int hash is deterministic within a process, which is all a cache that
    lives in one process needs. Lookups compare tokens and parent identity too, so a
    collision costs a cache miss, never wrong K/V. Tests monkeypatch this to force collisions.
    """
    return hash((parent_hash, token_ids))


@dataclass(eq=False)
class _Block:
    block_id: int
    ref_count: int = 0
    # Set only while the block is registered in the hash map (hash_map[hash] is this block).
    hash: int | None = None
    token_ids: tuple[int, ...] = ()
    # Identity of the block's content *including its whole prefix*. Uids are never reused, so
    # a child whose parent was evicted and re-registered by someone else can't be matched
    # through the new parent even if hashes collide.
    uid: int = -1
    parent_uid: int | None = None


@dataclass
class _ChainState:
    """Where a sequence's hash chain stands, so commits cost O(new full blocks)."""

    num_blocks: int = 0  # leading blocks already hashed (registered, hit or deduplicated)
    last_hash: int | None = None
    last_uid: int | None = None
    # A colliding block broke the chain: nothing after it can be found by lookups, so stop
    # registering rather than fill the hash map with unreachable entries.
    broken: bool = False


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True):
        if num_blocks < 1:
            raise ValueError("num_blocks must be at least 1")
        if block_size < 1:
            raise ValueError("block_size must be at least 1")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self._blocks = [_Block(i) for i in range(num_blocks)]
        self._free: deque[int] = deque(range(num_blocks))
        self._evictable: OrderedDict[int, None] = OrderedDict()
        self._hash_map: dict[int, _Block] = {}
        self._chains: dict[str, _ChainState] = {}
        self._next_uid = 0
        self.prefix_cache_hit_tokens = 0
        self.queried_tokens = 0

    # ---- counters -------------------------------------------------------------------------

    @property
    def num_free_blocks(self) -> int:
        """Blocks an allocation may take: truly free plus evictable cached ones."""
        return len(self._free) + len(self._evictable)

    @property
    def num_used_blocks(self) -> int:
        return self.num_blocks - self.num_free_blocks

    @property
    def usage(self) -> float:
        """Fraction of blocks referenced by sequences (cached-but-idle blocks count as free)."""
        return self.num_used_blocks / self.num_blocks

    @property
    def num_cached_blocks(self) -> int:
        """Blocks registered in the prefix cache, in use or evictable."""
        return len(self._hash_map)

    def ref_count(self, block_id: int) -> int:
        return self._blocks[block_id].ref_count

    def blocks_needed(self, seq: Sequence, num_new_tokens: int) -> int:
        """New blocks `append_slots(seq, num_new_tokens)` would allocate."""
        total = seq.num_computed_tokens + num_new_tokens
        return max(0, _cdiv(total, self.block_size) - len(seq.block_table))

    # ---- allocation -----------------------------------------------------------------------

    def allocate_prefix(self, seq: Sequence) -> int:
        """Reuse cached full blocks matching the start of `seq`; return the cached token count.

        Call when a sequence with an empty block table is admitted. At least one token is left
        uncomputed so the model still runs on it and produces logits.
        """
        assert not seq.block_table, "allocate_prefix needs an empty block table"
        chain = _ChainState()
        self._chains[seq.request_id] = chain
        seq.num_computed_tokens = 0
        if not self.enable_prefix_caching:
            return 0
        hits: list[_Block] = []
        max_blocks = (seq.num_tokens - 1) // self.block_size
        for i in range(max_blocks):
            tokens = self._block_tokens(seq, i)
            h = hash_block_tokens(chain.last_hash, tokens)
            block = self._hash_map.get(h)
            if block is None or block.token_ids != tokens or block.parent_uid != chain.last_uid:
                break
            hits.append(block)
            chain.last_hash, chain.last_uid = h, block.uid
        for block in hits:
            if block.ref_count == 0:
                del self._evictable[block.block_id]
            block.ref_count += 1
        chain.num_blocks = len(hits)
        seq.block_table = [b.block_id for b in hits]
        cached = len(hits) * self.block_size
        seq.num_computed_tokens = cached
        self.queried_tokens += seq.num_tokens
        self.prefix_cache_hit_tokens += cached
        return cached

    def can_append(self, seq: Sequence, num_new_tokens: int) -> bool:
        return self.blocks_needed(seq, num_new_tokens) <= self.num_free_blocks

    def append_slots(self, seq: Sequence, num_new_tokens: int) -> bool:
        """Grow the block table to cover num_computed_tokens + num_new_tokens; all or nothing."""
        needed = self.blocks_needed(seq, num_new_tokens)
        if needed > self.num_free_blocks:
            return False
        for _ in range(needed):
            seq.block_table.append(self._take_block())
        return True

    def trim(self, seq: Sequence) -> None:
        """Free the blocks past the sequence's computed tokens: slots a speculative draft
        reserved and its rejected tokens left empty. They were never full of computed
        tokens, so none was registered in the prefix cache."""
        keep = _cdiv(seq.num_computed_tokens, self.block_size)
        while len(seq.block_table) > keep:
            block = self._blocks[seq.block_table.pop()]
            assert block.hash is None and block.ref_count == 1, "trimmed a shared block"
            block.ref_count = 0
            self._free.append(block.block_id)

    def commit(self, seq: Sequence, num_computed_tokens: int) -> None:
        """Register hashes for blocks that became full now that tokens up to here are computed."""
        if not self.enable_prefix_caching:
            return
        chain = self._chains.setdefault(seq.request_id, _ChainState())
        num_full = min(num_computed_tokens // self.block_size, len(seq.block_table))
        while chain.num_blocks < num_full and not chain.broken:
            i = chain.num_blocks
            block = self._blocks[seq.block_table[i]]
            if block.hash is not None:
                # Already registered (a prefix hit, or a block this sequence registered).
                chain.last_hash, chain.last_uid = block.hash, block.uid
                chain.num_blocks += 1
                continue
            tokens = self._block_tokens(seq, i)
            h = hash_block_tokens(chain.last_hash, tokens)
            existing = self._hash_map.get(h)
            if existing is None:
                block.hash, block.token_ids = h, tokens
                block.uid, block.parent_uid = self._new_uid(), chain.last_uid
                self._hash_map[h] = block
                chain.last_uid = block.uid
            elif existing.token_ids == tokens and existing.parent_uid == chain.last_uid:
                # Same prefix computed concurrently elsewhere: keep the registered copy and
                # chain on through it, so our later blocks are reachable from lookups.
                chain.last_uid = existing.uid
            else:
                chain.broken = True  # hash collision: first registration wins
                break
            chain.last_hash = h
            chain.num_blocks += 1

    def free(self, seq: Sequence) -> None:
        """Release the sequence's blocks; hashed ones stay cached until evicted."""
        # Reverse order: tails enter the LRU before heads, so they are evicted first and a
        # surviving head keeps the longest reusable prefix.
        for block_id in reversed(seq.block_table):
            block = self._blocks[block_id]
            block.ref_count -= 1
            assert block.ref_count >= 0, f"block {block_id} freed twice"
            if block.ref_count == 0:
                if block.hash is not None:
                    self._evictable[block_id] = None
                else:
                    self._free.append(block_id)
        seq.block_table = []
        self._chains.pop(seq.request_id, None)

    def reset_prefix_cache(self) -> int:
        """Forget every cached block; return how many were registered. Live data is kept."""
        dropped = len(self._hash_map)
        for block in self._hash_map.values():
            self._clear_hash(block)
        self._hash_map.clear()
        self._free.extend(self._evictable)
        self._evictable.clear()
        # Running sequences' chains point at forgotten blocks: stop them registering.
        for chain in self._chains.values():
            chain.broken = True
        return dropped

    # ---- checks ---------------------------------------------------------------------------

    def check_invariants(self, live_seqs: Iterable[Sequence]) -> None:
        """Assert the accounting is consistent with the live sequences' block tables."""
        live = list(live_seqs)
        refs: Counter[int] = Counter()
        for seq in live:
            assert len(set(seq.block_table)) == len(seq.block_table), seq.request_id
            refs.update(seq.block_table)
        for block in self._blocks:
            assert block.ref_count == refs[block.block_id], (
                f"block {block.block_id}: ref {block.ref_count} != {refs[block.block_id]}"
            )
        free, evictable = set(self._free), set(self._evictable)
        assert len(free) == len(self._free), "duplicate in free list"
        assert not free & evictable, "block both free and evictable"
        in_use = {b.block_id for b in self._blocks if b.ref_count > 0}
        assert not in_use & (free | evictable), "referenced block on a free list"
        assert len(free) + len(evictable) + len(in_use) == self.num_blocks, "lost blocks"
        for block_id in free:
            assert self._blocks[block_id].hash is None, f"free block {block_id} has a hash"
        for block_id in evictable:
            assert self._blocks[block_id].hash is not None, f"evictable {block_id} lacks a hash"
        for h, block in self._hash_map.items():
            assert block.hash == h, f"hash map entry for {h} points at block {block.block_id}"
        for block in self._blocks:
            if block.hash is not None:
                assert self._hash_map.get(block.hash) is block, f"{block.block_id} unregistered"
        ids = {seq.request_id for seq in live}
        assert set(self._chains) <= ids, "chain state for a sequence that is not live"

    # ---- internals ------------------------------------------------------------------------

    def _take_block(self) -> int:
        if self._free:
            block_id = self._free.popleft()
        else:
            block_id, _ = self._evictable.popitem(last=False)
            block = self._blocks[block_id]
            del self._hash_map[block.hash]  # type: ignore[arg-type]
            self._clear_hash(block)
        self._blocks[block_id].ref_count = 1
        return block_id

    @staticmethod
    def _clear_hash(block: _Block) -> None:
        block.hash, block.token_ids, block.uid, block.parent_uid = None, (), -1, None

    def _new_uid(self) -> int:
        self._next_uid += 1
        return self._next_uid

    def _block_tokens(self, seq: Sequence, i: int) -> tuple[int, ...]:
        start, end = i * self.block_size, (i + 1) * self.block_size
        prompt, n = seq.prompt_token_ids, len(seq.prompt_token_ids)
        if end <= n:
            return tuple(prompt[start:end])
        out = seq.output_token_ids
        if start >= n:
            return tuple(out[start - n : end - n])
        return tuple(prompt[start:]) + tuple(out[: end - n])
