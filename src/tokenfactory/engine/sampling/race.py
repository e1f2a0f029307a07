"""Sampling as an exponential race.

argmax(w_i / E_i) with E_i ~ Exp(1) picks i with probability w_i / sum(w). Over a candidate
set the sampler races the T candidates; over the whole vocabulary it races block sums first,
then the tokens of the winning block: the same distribution from ~2 sqrt(vocab) draws instead
of vocab.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from tokenfactory.engine.sampling.blocks import _RACE_BLOCK
from tokenfactory.engine.sampling.row import SamplingRow
from tokenfactory.engine.sampling.seeds import row_seed

# The generator of the unseeded rows on a device (None: the global torch RNG). Called only
# when a batch has such rows.
SharedGenerator = Callable[[torch.device], torch.Generator | None]


def _race_blocks(
    w: torch.Tensor, seqs: Sequence[SamplingRow], shared: SharedGenerator
) -> torch.Tensor:
    """Draw a column from each row of weights w >= 0 (not normalised): race the block
    sums, then the columns of the winning block. P(i) = (S_b / S) * (w_i / S_b)."""
    rows, vocab = w.shape
    width = min(_RACE_BLOCK, vocab)
    full_blocks = vocab // width
    sums = w[:, : full_blocks * width].view(rows, full_blocks, width).sum(dim=-1)
    if full_blocks * width < vocab:
        sums = torch.cat([sums, w[:, full_blocks * width :].sum(dim=-1, keepdim=True)], dim=1)
    nblocks = sums.shape[1]
    log_noise = _log_noise(seqs, nblocks + width, w.device, shared)
    block = (sums.log_() - log_noise[:, :nblocks]).argmax(dim=-1, keepdim=True)
    idx = block * width + torch.arange(width, device=w.device)
    inside = idx < vocab  # the last block may be short
    idx.clamp_(max=vocab - 1)
    scores = (w.gather(1, idx) * inside).log_() - log_noise[:, nblocks:]
    return idx.gather(1, scores.argmax(dim=-1, keepdim=True)).squeeze(1)


def _log_noise(
    seqs: Sequence[SamplingRow], width: int, device: torch.device, shared: SharedGenerator
) -> torch.Tensor:
    """log E for [len(seqs), width] draws E ~ Exp(1): the race picks argmax(log w - log E).

    E = -log(1 - U) from float64 uniforms (exponential_ is ~4x slower on CPU; float64 keeps
    the tail of E that decides low-probability tokens). A seeded row's draws depend only on
    its seed, its output count and `width` (a function of the row alone), never on its
    batch mates.
    """
    u = torch.empty(len(seqs), width, dtype=torch.float64, device=device)
    seeded = [i for i, s in enumerate(seqs) if s.params.seed is not None]
    if len(seeded) < len(seqs):
        u.uniform_(generator=shared(device))
    for i in seeded:
        seed = seqs[i].params.seed
        assert seed is not None  # the seeded rows
        gen = torch.Generator(device=device)
        gen.manual_seed(row_seed(seed, seqs[i].num_output_tokens))
        u[i].uniform_(generator=gen)
    e = u.neg_().log1p_().neg_()
    # A zero draw (U = 0) would make its token win whatever its weight.
    return e.clamp_min_(torch.finfo(torch.float64).tiny).log_().float()
