"""Repetition, presence and frequency penalties.

Penalties touch only the logits of tokens that occur (flat indices), never [rows, vocab]
count tensors.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import torch

from tokenfactory.engine.sampling.row import SamplingRow


def _apply_penalties(
    x: torch.Tensor, seqs: Sequence[SamplingRow], out: torch.Tensor | None = None
) -> torch.Tensor:
    """Repetition (prompt + output, HF style), presence and frequency (output only).

    Returns a penalised copy (in `out` if given: contiguous, x's shape). Only the logits of
    tokens that occur are touched, through flat indices row * vocab + token: no [rows, vocab]
    count tensors. Index bookkeeping runs in numpy on the host, where the token lists are.
    """
    out = torch.empty_like(x, memory_format=torch.contiguous_format) if out is None else out
    out.copy_(x)
    flat, vocab, device = out.view(-1), x.shape[1], x.device

    rep = [i for i, s in enumerate(seqs) if s.params.repetition_penalty != 1.0]
    if rep:
        keys, owner = _flat_keys(
            [(i, t) for i in rep for t in (seqs[i].prompt_token_ids, seqs[i].output_token_ids)],
            vocab,
        )
        if keys.size:
            table = np.array([s.params.repetition_penalty for s in seqs], dtype=np.float32)
            penalty = torch.from_numpy(table[owner]).to(device)
            index = torch.from_numpy(keys).to(device)
            v = flat.index_select(0, index)
            # Repeated keys write the same value, so their order does not matter.
            flat.index_copy_(0, index, torch.where(v > 0, v / penalty, v * penalty))

    freq = [
        i
        for i, s in enumerate(seqs)
        if s.params.frequency_penalty != 0.0 or s.params.presence_penalty != 0.0
    ]
    if freq:
        keys, _ = _flat_keys([(i, seqs[i].output_token_ids) for i in freq], vocab)
        if keys.size:
            keys, counts = np.unique(keys, return_counts=True)
            table = np.array(
                [(s.params.frequency_penalty, s.params.presence_penalty) for s in seqs],
                dtype=np.float32,
            )[keys // vocab]
            f, p, c = (
                torch.from_numpy(a).to(device)
                for a in (table[:, 0], table[:, 1], counts.astype(np.float32))
            )
            index = torch.from_numpy(keys).to(device)
            flat.index_copy_(0, index, flat.index_select(0, index) - f * c - p)
    return out


def _flat_keys(entries: list[tuple[int, list[int]]], vocab: int) -> tuple[np.ndarray, np.ndarray]:
    """Flat indices row * vocab + token for (row, token ids) entries, and the row of each key.
    Ids outside the vocabulary have no logit and are dropped."""
    counts = np.array([len(tokens) for _, tokens in entries], dtype=np.int64)
    # numpy converts a list of ints ~10x faster than torch.tensor.
    tokens = np.fromiter(
        itertools.chain.from_iterable(t for _, t in entries), np.int64, int(counts.sum())
    )
    owner = np.repeat(np.array([row for row, _ in entries], dtype=np.int64), counts)
    valid = (tokens >= 0) & (tokens < vocab)
    if not valid.all():
        tokens, owner = tokens[valid], owner[valid]
    return owner * vocab + tokens, owner
