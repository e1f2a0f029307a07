"""top-k, top-p and min-p over each row's candidate set.

top-k / top-p rows look at their top-T candidates (T = 64, then 512, then 4096) and only the
rows whose kept set does not fit fall back to a full sort; the kept set is the same.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tokenfactory.engine.sampling.blocks import _topk
from tokenfactory.engine.sampling.workspace import _index, _scratch, to_device
from tokenfactory.engine.sampling_params import SamplingParams

# Candidate-set sizes tried in turn for top-k / top-p rows before a full sort of the row.
CANDIDATE_TIERS = (64, 512, 4096)


@dataclass
class _Filters:
    """Per-row sampling settings of a group of rows, as [rows, 1] float32 columns."""

    inv_temp: torch.Tensor
    top_k: torch.Tensor  # 0 = off (long, [rows])
    top_p: torch.Tensor  # inf = off
    min_p: torch.Tensor  # 0 = off

    @classmethod
    def build(cls, params: list[SamplingParams], vocab: int, device: torch.device) -> _Filters:
        rows = [
            (
                1.0 / p.temperature,
                p.top_k if 0 < p.top_k < vocab else 0,
                p.top_p if p.top_p < 1.0 else float("inf"),
                p.min_p,
            )
            for p in params
        ]
        # One host->device copy for all per-row settings.
        table = to_device(rows, torch.float32, device).view(-1, 4)
        inv_temp, top_k, top_p, min_p = table.split(1, dim=1)
        return cls(inv_temp, top_k.squeeze(1).long(), top_p, min_p)

    def select(self, index: torch.Tensor) -> _Filters:
        return _Filters(*(t.index_select(0, index) for t in vars(self).values()))


def _candidate_groups(
    x: torch.Tensor, filters: _Filters, tiers: tuple[int, ...], work: torch.Tensor | None = None
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Apply top-k, top-p and min-p to rows of (penalised) logits, each row looking only at its
    top-T candidates for the first tier T that settles it, else at its fully sorted row.

    Returns groups (rows [g], weights [g, T], token ids [g, T]): for the rows of x listed in
    `rows`, the unnormalised kept probabilities of their candidates (0: filtered out).
    `work`: optional scratch of x's shape.
    """
    nrows, vocab = x.shape
    tiers = tuple(t for t in tiers if t < vocab) + (vocab,)
    top_k = filters.top_k.tolist()
    top_p = filters.top_p.squeeze(1).tolist()
    # A row starts at the first tier with more candidates than its top-k: seeing one candidate
    # past the k-th tells whether ties with the k-th continue outside the set.
    tier_of = [next(j for j, t in enumerate(tiers) if k < t or t == vocab) for k in top_k]

    # The top-p normaliser of rows without top-k is the sum over the whole row: computed once,
    # at the first tier (where all those rows start), from its input and maxima.
    z = torch.ones(nrows, 1, device=x.device)
    need_z = [i for i in range(nrows) if top_k[i] == 0 and top_p[i] != float("inf")]

    groups = []
    for j, width in enumerate(tiers):
        rows = [i for i in range(nrows) if tier_of[i] == j]
        if not rows:
            continue
        index = _index(rows, x.device)
        if len(rows) == nrows:
            sub = x
        else:
            sub = torch.index_select(x, 0, index, out=_scratch(work, len(rows)))
        if width == vocab:
            vals, tokens = sub.sort(dim=-1, descending=True)
        else:
            vals, tokens = _topk(sub, width)
        if j == 0 and need_z:
            position = {r: p for p, r in enumerate(rows)}
            at = [position[i] for i in need_z]
            e = sub if len(at) == len(rows) else sub.index_select(0, _index(at, x.device))
            # Into the scratch unless the scratch holds this tier's input.
            e = torch.sub(e, vals[at, :1], out=None if sub is not x else _scratch(work, len(at)))
            if bool((filters.inv_temp != 1.0).any()):
                e.mul_(filters.inv_temp[need_z])
            z[need_z] = e.exp_().sum(dim=-1, keepdim=True)
            del e
        weights, settled, hopeless = _filter_sorted(
            vals, filters.select(index), z.index_select(0, index), final=width == vocab
        )
        if not bool(settled.all()):
            # Rows whose candidates hold under a quarter of the top-p mass skip to the sort:
            # the next tiers are not likely to be enough either.
            for i, h in zip(index[~settled].tolist(), hopeless[~settled].tolist(), strict=True):
                tier_of[i] = len(tiers) - 1 if h else j + 1
            done = settled.nonzero().squeeze(1)
            weights, tokens, index = weights[done], tokens[done], index[done]
        if index.numel():
            groups.append((index, weights, tokens))
    return groups


def _filter_sorted(
    vals: torch.Tensor, f: _Filters, z: torch.Tensor, final: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Kept weights over candidates `vals` [rows, T] (a row's top-T logits, best first),
    whether each row is settled by them (always when `final`: the candidates are the row),
    and whether an unsettled top-p row is far from it.

    Same rules as a full sort: top-k keeps values >= the k-th; top-p keeps a token while the
    mass before it (renormalised over the top-k set, or over the row: `z`) is < top_p; min-p
    keeps probabilities >= min_p * the top one.
    """
    e = torch.sub(vals, vals[:, :1]).mul_(f.inv_temp).exp_()  # top candidate: 1
    use_k = f.top_k > 0
    kth = vals.gather(1, (f.top_k.clamp(1, vals.shape[1]) - 1).unsqueeze(1))
    keep = vals >= torch.where(use_k.unsqueeze(1), kth, float("-inf"))
    # top-k is settled when the last candidate falls outside it.
    settled = ~use_k | ~keep[:, -1]
    hopeless = torch.zeros_like(settled)
    use_p = f.top_p.squeeze(1) < float("inf")
    if bool(use_p.any()):
        w = e * keep
        norm = torch.where(use_k.unsqueeze(1), w.sum(dim=-1, keepdim=True), z)
        probs = w / norm
        cum = probs.cumsum(dim=-1)
        keep &= (cum - probs) < f.top_p  # the top token has 0 mass before it: always kept
        # Without top-k, top-p is settled once the candidates' mass reaches top_p: every
        # later token has at least that much mass before it.
        mass = cum[:, -1:]
        settled &= use_k | ~use_p | (mass >= f.top_p).squeeze(1)
        hopeless = ~use_k & (mass * 4 < f.top_p).squeeze(1)
    if bool((f.min_p > 0).any()):
        keep &= e >= f.min_p
    if final:
        settled = torch.ones_like(settled)
    return e * keep, settled, hopeless
