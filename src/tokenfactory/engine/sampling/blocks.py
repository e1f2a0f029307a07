"""Argmax and top-k from block maxima.

Full-row argmax and top-k are slow on CPU; the maxima of fixed-width blocks are one
vectorised amax. Only the few blocks that can hold the winners are then searched, with the
same result as the full-row op.
"""

from __future__ import annotations

import torch

# Block width for the block argmax and the two-level race (~sqrt(vocab) keeps both levels small).
_RACE_BLOCK = 256


def _blocks(x: torch.Tensor, width: int) -> tuple[torch.Tensor, int]:
    """Maxima of the full `width`-wide blocks of each row, and how many there are."""
    rows, vocab = x.shape
    n = vocab // width
    return x[:, : n * width].view(rows, n, width).amax(dim=-1), n


def _argmax(x: torch.Tensor) -> torch.Tensor:
    """Row argmax (first index among ties, like torch.argmax) from block maxima: amax is
    vectorised, argmax over a whole row is several times slower on CPU."""
    rows, vocab = x.shape
    width = _RACE_BLOCK
    if vocab < 4 * width:
        return x.argmax(dim=-1)
    x = x.contiguous()
    maxima, n = _blocks(x, width)
    if n * width < vocab:
        maxima = torch.cat([maxima, x[:, n * width :].amax(dim=-1, keepdim=True)], dim=1)
    idx = maxima.argmax(dim=-1, keepdim=True) * width + torch.arange(width, device=x.device)
    # Past the end of a short last block, the clamp repeats the last token: argmax keeps the
    # first occurrence, which is the real one.
    idx.clamp_(max=vocab - 1)
    return idx.gather(1, x.gather(1, idx).argmax(dim=-1, keepdim=True)).squeeze(1)


def _topk(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """torch.topk(x, k) (sorted, best first), searching only the k blocks with the largest
    maxima plus the short tail block. Exact: a block outside them holds no value above the
    k-th largest that those k maxima do not already match."""
    rows, vocab = x.shape
    # Narrow blocks for large k keep the gathered set (k * width) small.
    width = 256 if k <= 8 else 64 if k <= 32 else 32 if k <= 128 else 16
    if vocab // width < 4 * k:
        return x.topk(k, dim=-1)
    x = x.contiguous()
    maxima, n = _blocks(x, width)
    blocks = maxima.topk(k, dim=-1, sorted=False).indices
    idx = (blocks.unsqueeze(-1) * width + torch.arange(width, device=x.device)).view(rows, -1)
    if n * width < vocab:
        tail = torch.arange(n * width, vocab, device=x.device).expand(rows, -1)
        idx = torch.cat([idx, tail], dim=1)
    vals, pos = x.gather(1, idx).topk(k, dim=-1)
    return vals, idx.gather(1, pos)
