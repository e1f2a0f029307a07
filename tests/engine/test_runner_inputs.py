"""The runner's vectorised step preparation against a per-token reference built here."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tokenfactory.engine.sampling_params import SamplingParams
from tokenfactory.engine.scheduler import ScheduledChunk, SchedulerOutput
from tokenfactory.engine.sequence import Sequence
from tokenfactory.engine.step_inputs import build_step_inputs, ship

BS = 4


def _seq(prompt_len: int, output_len: int, first_block: int, seed: int) -> Sequence:
    rng = np.random.default_rng(seed)
    seq = Sequence(f"r{seed}", rng.integers(1, 500, prompt_len).tolist(), SamplingParams())
    seq.output_token_ids = rng.integers(1, 500, output_len).tolist()
    blocks = -(-seq.num_tokens // BS)
    # Scattered, non-contiguous block ids, as a block manager hands them out.
    seq.block_table = [first_block + 3 * i for i in range(blocks)]
    return seq


def _chunk(seq: Sequence, start: int, n: int, seq_len: int | None = None) -> ScheduledChunk:
    return ScheduledChunk(seq, start, n, seq_len if seq_len is not None else seq.num_tokens)


def _reference(chunks: list[ScheduledChunk]) -> dict:
    """The flattening as a loop over every token (what the runner did before)."""
    ids, pos, slots, sample_rows, tables = [], [], [], [], []
    q_start, q_len, ctx = [], [], []
    num_decodes = 0
    for c in chunks:
        seq, start, n = c.seq, c.start, c.num_tokens
        if n == 1 and start > 0 and num_decodes == len(q_start):
            num_decodes += 1
        q_start.append(len(ids))
        q_len.append(n)
        ctx.append(start + n)
        tables.append(seq.block_table[: -(-(start + n) // BS)])
        for p in range(start, start + n):
            ids.append(seq.token_at(p))
            pos.append(p)
            slots.append(seq.block_table[p // BS] * BS + p % BS)
        if c.samples:
            sample_rows.append(len(ids) - 1)
    width = max(len(t) for t in tables)
    padded = [t + [0] * (width - len(t)) for t in tables]
    decode_width = max((len(t) for t in tables[:num_decodes]), default=1)
    return dict(
        token_ids=ids, positions=pos, slots=slots, sample_rows=sample_rows, q_start=q_start,
        q_len=q_len, context_len=ctx, block_tables=padded, num_decodes=num_decodes,
        decode_width=decode_width,
    )  # fmt: skip


def _check(chunks: list[ScheduledChunk]) -> None:
    got = build_step_inputs(SchedulerOutput(chunks, [], 0, 0), BS)
    ref = _reference(chunks)
    for name in ("token_ids", "positions", "slots", "sample_rows", "q_start", "q_len",
                 "context_len", "block_tables"):  # fmt: skip
        arr = getattr(got, name)
        assert arr.dtype == np.int64, name
        assert arr.tolist() == ref[name], name
    assert got.num_decodes == ref["num_decodes"]
    assert got.decode_width == ref["decode_width"]
    assert got.is_decode_only == (got.num_decodes == len(chunks))


def test_decodes_then_prompt_from_scratch():
    a, b, c = _seq(9, 3, 10, 1), _seq(17, 1, 40, 2), _seq(6, 0, 70, 3)
    _check([_chunk(a, 11, 1), _chunk(b, 17, 1), _chunk(c, 0, 6)])


def test_decode_only_pads_tables_to_the_longest():
    seqs = [_seq(n, 2, 100 * i, i) for i, n in enumerate((1, 5, 30, 13))]
    chunks = [_chunk(s, s.num_tokens - 1, 1) for s in seqs]
    _check(chunks)
    got = build_step_inputs(SchedulerOutput(chunks, [], 0, 0), BS)
    assert got.is_decode_only and got.num_decodes == 4
    assert got.block_tables.shape == (4, 8) and got.decode_width == 8
    assert got.block_tables[0, 1:].tolist() == [0] * 7  # padding


def test_chunked_prefill_after_prefix_cache_hit():
    # 32 prompt tokens came from the prefix cache; this chunk runs 10 more, the next the rest.
    seq = _seq(50, 0, 5, 4)
    _check([_chunk(seq, 32, 10)])
    _check([_chunk(seq, 42, 8)])
    decode = _seq(20, 4, 200, 5)
    _check([_chunk(decode, 23, 1), _chunk(seq, 32, 10)])


def test_multi_token_span_after_context():
    # A sequence verifying k=4 drafted tokens: 5 query tokens after 22 of context, crossing
    # from its prompt into its output, among decodes and a prompt.
    d1, spec, p = _seq(7, 2, 300, 6), _seq(20, 7, 1, 7), _seq(11, 0, 500, 8)
    _check([_chunk(d1, 8, 1), _chunk(spec, 22, 5), _chunk(p, 0, 11)])
    # Only output tokens in the span.
    _check([_chunk(spec, 21, 6)])


def test_preempted_sequence_recomputes_prompt_and_output():
    seq = _seq(13, 6, 9, 9)
    _check([_chunk(seq, 0, 19)])
    # Chunked: the last chunk does not sample until the sequence's end.
    _check([_chunk(seq, 0, 8, 19), _chunk(_seq(3, 0, 90, 10), 0, 3)])


def test_single_token_chunks_that_are_not_decodes():
    one_token_prompt = _seq(1, 0, 60, 11)
    tail = _seq(9, 0, 80, 12)
    dec = _seq(9, 1, 120, 13)
    # A one-token prompt, and a last prompt token after a prompt chunk: neither is a decode.
    _check([_chunk(one_token_prompt, 0, 1), _chunk(dec, 9, 1)])
    _check([_chunk(dec, 9, 1), _chunk(tail, 0, 5, 9), _chunk(_seq(4, 2, 150, 14), 5, 1)])
    got = build_step_inputs(
        SchedulerOutput([_chunk(dec, 9, 1), _chunk(tail, 0, 5, 9), _chunk(dec, 9, 1)], [], 0, 0),
        BS,
    )
    assert got.num_decodes == 1 and not got.is_decode_only


@pytest.mark.parametrize("seed", range(20))
def test_random_steps(seed):
    rng = np.random.default_rng(seed)
    chunks = []
    for i in range(int(rng.integers(1, 9))):
        seq = _seq(int(rng.integers(1, 40)), int(rng.integers(0, 10)), 7 * i, 100 * seed + i)
        start = int(rng.integers(0, seq.num_tokens))
        n = int(rng.integers(1, seq.num_tokens - start + 1))
        chunks.append(_chunk(seq, start, n))
    _check(chunks)


@pytest.mark.parametrize("packed", [False, True])
def test_ship(packed):
    arrays = {
        "a": np.arange(3, dtype=np.int64),
        "b": np.arange(6, dtype=np.int64).reshape(2, 3),
        "empty": np.zeros(0, dtype=np.int64),
    }
    dev = ship(arrays, torch.device("cpu"), packed=packed)
    assert list(dev) == ["a", "b", "empty"]
    for name, a in arrays.items():
        assert dev[name].dtype == torch.int64 and dev[name].tolist() == a.tolist()


def test_token_fill_writes_the_rows_from_the_source_on_the_device():
    from tokenfactory.engine.step_inputs import TokenFill

    token_ids = torch.tensor([-1, 7, -1, 9])
    sampled = torch.tensor([40, 41, 42])  # the step before's ids, in its row order
    TokenFill(np.array([0, 2]), np.array([2, 0]), sampled).apply(token_ids)
    assert token_ids.tolist() == [42, 7, 40, 9]
