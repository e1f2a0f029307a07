"""BlockManager: paged accounting, prefix cache hits and misses, LRU eviction, invariants."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    precondition,
    rule,
)

from tokenfactory.engine import block_manager as bm_module
from tokenfactory.engine.block_manager import BlockManager
from tokenfactory.engine.sampling_params import SamplingParams
from tokenfactory.engine.sequence import Sequence


def make_seq(rid: str, prompt: list[int]) -> Sequence:
    return Sequence(rid, list(prompt), SamplingParams())


def compute(bm: BlockManager, seq: Sequence, n: int | None = None) -> None:
    """What the scheduler and runner do for one chunk: slots, compute, commit."""
    n = seq.num_uncomputed_tokens if n is None else n
    assert bm.append_slots(seq, n)
    seq.num_computed_tokens += n
    bm.commit(seq, seq.num_computed_tokens)


def admit(bm: BlockManager, seq: Sequence) -> int:
    cached = bm.allocate_prefix(seq)
    compute(bm, seq)
    return cached


def test_prefix_hit_shares_blocks_and_counts_refs():
    bm = BlockManager(num_blocks=10, block_size=4)
    a = make_seq("a", list(range(10)))
    assert admit(bm, a) == 0
    assert bm.num_cached_blocks == 2  # two full blocks; the partial third is not hashed
    b = make_seq("b", list(range(8)) + [100, 101])
    assert bm.allocate_prefix(b) == 8
    assert b.num_computed_tokens == 8
    assert b.block_table == a.block_table[:2]
    assert [bm.ref_count(i) for i in b.block_table] == [2, 2]
    compute(bm, b)
    assert b.block_table[2] != a.block_table[2]  # the partial block is never shared
    bm.check_invariants([a, b])

    bm.free(a)
    assert [bm.ref_count(i) for i in b.block_table[:2]] == [1, 1]
    assert bm.num_used_blocks == 3  # b's three; a's private partial block went back free
    bm.check_invariants([b])
    bm.free(b)
    assert bm.num_used_blocks == 0 and bm.usage == 0.0
    assert bm.num_free_blocks == 10 and bm.num_cached_blocks == 2
    bm.check_invariants([])


def test_miss_on_different_first_block():
    bm = BlockManager(num_blocks=10, block_size=4)
    a = make_seq("a", list(range(9)))
    admit(bm, a)
    b = make_seq("b", [99] + list(range(1, 9)))
    assert bm.allocate_prefix(b) == 0
    assert b.block_table == [] and b.num_computed_tokens == 0
    bm.check_invariants([a, b])


def test_never_the_whole_prompt():
    bm = BlockManager(num_blocks=10, block_size=4)
    a = make_seq("a", list(range(8)))
    admit(bm, a)
    bm.free(a)
    same = make_seq("same", list(range(8)))
    # Both blocks are cached, but the last token must still run to produce logits.
    assert bm.allocate_prefix(same) == 4
    assert same.num_uncomputed_tokens == 4
    longer = make_seq("longer", list(range(9)))
    assert bm.allocate_prefix(longer) == 8
    bm.check_invariants([same, longer])


def test_counters_and_caching_disabled():
    bm = BlockManager(num_blocks=10, block_size=4)
    admit(bm, make_seq("a", list(range(9))))
    b = make_seq("b", list(range(9)))
    bm.allocate_prefix(b)
    assert (bm.queried_tokens, bm.prefix_cache_hit_tokens) == (18, 8)

    off = BlockManager(num_blocks=10, block_size=4, enable_prefix_caching=False)
    a = make_seq("a", list(range(9)))
    admit(off, a)
    off.free(a)
    b = make_seq("b", list(range(9)))
    assert off.allocate_prefix(b) == 0
    assert off.num_cached_blocks == 0 and off.queried_tokens == 0
    off.check_invariants([b])


def test_hash_collision_is_a_miss(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(bm_module, "hash_block_tokens", lambda parent, tokens: 0)
    bm = BlockManager(num_blocks=10, block_size=4)
    a = make_seq("a", [1, 2, 3, 4, 5])
    admit(bm, a)
    b = make_seq("b", [9, 9, 9, 9, 5])  # same (forced) hash, different tokens
    assert bm.allocate_prefix(b) == 0
    compute(bm, b)  # b's colliding block must not replace a's registration
    assert bm.num_cached_blocks == 1
    bm.check_invariants([a, b])
    c = make_seq("c", [1, 2, 3, 4, 7])
    assert bm.allocate_prefix(c) == 4
    assert c.block_table == a.block_table[:1]
    bm.check_invariants([a, b, c])


def test_collision_with_a_different_parent_is_a_miss(monkeypatch: pytest.MonkeyPatch):
    # A hash that ignores the parent: block [5, 6] collides across different prefixes.
    monkeypatch.setattr(bm_module, "hash_block_tokens", lambda parent, tokens: hash(tokens))
    bm = BlockManager(num_blocks=10, block_size=2)
    x = make_seq("x", [1, 1, 5, 6, 0])
    admit(bm, x)
    y = make_seq("y", [2, 2, 5, 6, 0])
    assert bm.allocate_prefix(y) == 0
    compute(bm, y)  # registers [2, 2]; its [5, 6] collides with x's and stays unregistered
    bm.check_invariants([x, y])
    z = make_seq("z", [2, 2, 5, 6, 7])
    # [2, 2] hits; [5, 6] is registered under x's parent, whose K/V differ: a miss.
    assert bm.allocate_prefix(z) == 2
    bm.check_invariants([x, y, z])


def test_concurrent_identical_prefix_registers_once_and_chains_through():
    bm = BlockManager(num_blocks=12, block_size=4)
    prefix = list(range(8))
    a = make_seq("a", prefix + [50])
    b = make_seq("b", prefix + [60, 61, 62, 63, 64])
    assert bm.allocate_prefix(a) == 0
    assert bm.allocate_prefix(b) == 0  # nothing cached yet: both compute the prefix
    compute(bm, a)
    compute(bm, b)
    assert bm.num_cached_blocks == 3  # a's two blocks + b's third; b's copies are skipped
    bm.check_invariants([a, b])
    c = make_seq("c", prefix + [60, 61, 62, 63, 99])
    assert bm.allocate_prefix(c) == 12
    assert c.block_table == a.block_table[:2] + b.block_table[2:3]
    bm.check_invariants([a, b, c])


def test_lru_evicts_tails_first_and_respects_recency():
    bm = BlockManager(num_blocks=6, block_size=2)
    p = make_seq("p", [1, 1, 2, 2, 0])
    q = make_seq("q", [3, 3, 4, 4, 0])
    admit(bm, p)
    bm.free(p)
    admit(bm, q)
    bm.free(q)
    # LRU oldest first: p's tail, p's head, q's tail, q's head. A hit on p's head refreshes it.
    r = make_seq("r", [1, 1, 9])
    assert admit(bm, r) == 2
    bm.free(r)
    assert bm.num_free_blocks == 6 and bm.num_cached_blocks == 4
    # 4 blocks: the 2 truly free ones, then evict p's tail and q's tail.
    big = make_seq("big", [7] * 7)
    assert bm.allocate_prefix(big) == 0
    assert bm.append_slots(big, 7)
    bm.check_invariants([big])
    assert bm.num_cached_blocks == 2
    p2 = make_seq("p2", [1, 1, 2, 2, 0])
    q2 = make_seq("q2", [3, 3, 4, 4, 0])
    assert bm.allocate_prefix(p2) == 2
    assert bm.allocate_prefix(q2) == 2
    bm.free(q2)
    bm.free(p2)  # freed last: p's head is the most recently used
    # One more block evicts q's head, now the least recently used.
    big.num_computed_tokens = 7
    assert bm.append_slots(big, 2)
    bm.check_invariants([big])
    assert bm.allocate_prefix(make_seq("q3", [3, 3, 4, 4, 0])) == 0


def test_append_slots_is_all_or_nothing():
    bm = BlockManager(num_blocks=2, block_size=4)
    a = make_seq("a", list(range(12)))
    bm.allocate_prefix(a)
    assert not bm.can_append(a, 12)
    assert not bm.append_slots(a, 12)
    assert a.block_table == [] and bm.num_free_blocks == 2
    assert bm.can_append(a, 8) and bm.append_slots(a, 8)
    assert len(a.block_table) == 2 and bm.usage == 1.0
    assert bm.blocks_needed(a, 0) == 0
    bm.check_invariants([a])


def test_reset_prefix_cache():
    bm = BlockManager(num_blocks=8, block_size=2)
    a = make_seq("a", [1, 2, 3, 4, 5])
    admit(bm, a)
    b = make_seq("b", [6, 7, 8])
    admit(bm, b)
    bm.free(b)
    assert bm.reset_prefix_cache() == 3
    assert bm.num_cached_blocks == 0
    bm.check_invariants([a])
    assert bm.allocate_prefix(make_seq("c", [1, 2, 3, 4, 5])) == 0
    a.output_token_ids.append(9)
    compute(bm, a)  # a's chain was reset: it stops registering
    assert bm.num_cached_blocks == 0
    bm.free(a)
    assert bm.num_free_blocks == 8


# ---- stateful: random operations, invariants after each -------------------------------------


class BlockManagerMachine(RuleBasedStateMachine):
    """Random admit/compute/decode/free. A shadow KV cache checks prefix hits serve the
    right content: each slot holds the full token prefix it was computed from."""

    seqs = Bundle("seqs")

    @initialize(
        num_blocks=st.integers(2, 12),
        block_size=st.integers(1, 4),
        caching=st.booleans(),
    )
    def setup(self, num_blocks: int, block_size: int, caching: bool) -> None:
        self.bm = BlockManager(num_blocks, block_size, enable_prefix_caching=caching)
        self.live: dict[str, Sequence] = {}
        self.kv: dict[tuple[int, int], tuple[int, ...]] = {}
        self.next_id = 0

    def _slot(self, seq: Sequence, pos: int) -> tuple[int, int]:
        bs = self.bm.block_size
        return seq.block_table[pos // bs], pos % bs

    @rule(target=seqs, prompt=st.lists(st.integers(0, 2), min_size=1, max_size=12))
    def add(self, prompt: list[int]) -> Sequence:
        seq = make_seq(f"s{self.next_id}", prompt)
        self.next_id += 1
        cached = self.bm.allocate_prefix(seq)
        assert cached % self.bm.block_size == 0 and cached < seq.num_tokens
        assert seq.num_computed_tokens == cached
        tokens = seq.all_token_ids
        for pos in range(cached):
            assert self.kv[self._slot(seq, pos)] == tuple(tokens[: pos + 1])
        self.live[seq.request_id] = seq
        return seq

    @rule(seq=seqs, frac=st.floats(0.0, 1.0), new_token=st.integers(0, 2))
    def step(self, seq: Sequence, frac: float, new_token: int) -> None:
        if seq.request_id not in self.live:
            return
        if seq.num_uncomputed_tokens == 0:
            seq.output_token_ids.append(new_token)  # the sampled token of the last step
        n = max(1, round(frac * seq.num_uncomputed_tokens))
        table_before = list(seq.block_table)
        if not self.bm.append_slots(seq, n):
            assert seq.block_table == table_before
            return
        tokens = seq.all_token_ids
        start = seq.num_computed_tokens
        for pos in range(start, start + n):
            slot = self._slot(seq, pos)
            assert self.bm.ref_count(slot[0]) == 1, "writing into a shared block"
            self.kv[slot] = tuple(tokens[: pos + 1])
        seq.num_computed_tokens += n
        self.bm.commit(seq, seq.num_computed_tokens)

    @rule(seq=consumes(seqs))
    def free(self, seq: Sequence) -> None:
        if self.live.pop(seq.request_id, None) is not None:
            self.bm.free(seq)
            assert seq.block_table == []

    @precondition(lambda self: self.next_id % 7 == 3)
    @rule()
    def reset(self) -> None:
        self.bm.reset_prefix_cache()

    @invariant()
    def consistent(self) -> None:
        if hasattr(self, "bm"):
            self.bm.check_invariants(self.live.values())
            assert self.bm.num_free_blocks + self.bm.num_used_blocks == self.bm.num_blocks


BlockManagerMachine.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestBlockManagerMachine = BlockManagerMachine.TestCase
