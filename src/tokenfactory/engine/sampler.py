"""Sampler: turns one step's logits into next tokens (and logprobs), vectorised over the batch.

Order per row, as in vLLM: penalties -> (greedy: argmax) -> temperature -> top-k -> top-p
-> min-p -> sample. Logprobs describe the model's raw distribution (before any of that).

The sampler runs every engine step, so it avoids full-vocabulary work (sorts, per-token noise,
extra passes over [rows, vocab]) wherever an exact shortcut exists:

- argmax and top-k read block maxima first: only the few blocks that can hold the winners are
  searched.
- top-k / top-p rows look at their top-T candidates (T = 64, then 512, then 4096) and only the
  rows whose kept set does not fit fall back to a full sort; the kept set is the same.
- Sampling is an exponential race: argmax(w_i / E_i) with E_i ~ Exp(1) picks i with probability
  w_i / sum(w). Over a candidate set it races the T candidates; over the whole vocabulary it
  races block sums first, then the tokens of the winning block: the same distribution from
  ~2 sqrt(vocab) draws instead of vocab.
- Penalties touch only the logits of tokens that occur (flat indices), never [rows, vocab]
  count tensors.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from tokenfactory.engine.sampling_params import SamplingParams
from tokenfactory.engine.sequence import Sequence

# Temperatures below this are treated as greedy: dividing by them only amplifies rounding noise.
GREEDY_TEMPERATURE = 1e-5

_MASK64 = (1 << 64) - 1

# Rows sampled together at most (see Sampler.__call__).
CHUNK_ROWS = 64
# Candidate-set sizes tried in turn for top-k / top-p rows before a full sort of the row.
CANDIDATE_TIERS = (64, 512, 4096)
# Block width for the block argmax and the two-level race (~sqrt(vocab) keeps both levels small).
_RACE_BLOCK = 256
# min-p thresholds are applied as e * (1 / min_p) >= 1: the clamp keeps that finite. Tokens
# below 1e-30 of the top token's probability cannot be drawn at float32 precision anyway.
_MIN_P_FLOOR = 1e-30


@dataclass
class TokenLogprob:
    """Logprobs at one generated position."""

    token_id: int
    logprob: float
    top: list[tuple[int, float]]  # the top-k alternatives (token_id, logprob), best first


@dataclass
class SamplerOutput:
    token_ids: list[int]
    logprobs: list[TokenLogprob | None]  # None where the row's params.logprobs is None


def row_seed(seed: int, step: int) -> int:
    """A 64-bit generator seed for a request's `step`-th output token (splitmix64 mixing).

    Depends only on the request, never on its batch mates or on how often it was preempted,
    so a seeded request replays the same tokens.
    """
    x = (seed * 0x9E3779B97F4A7C15 + step) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def _is_greedy(p: SamplingParams) -> bool:
    return p.temperature < GREEDY_TEMPERATURE


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
        table = torch.tensor(rows, dtype=torch.float32, device=device).view(-1, 4)
        inv_temp, top_k, top_p, min_p = table.split(1, dim=1)
        return cls(inv_temp, top_k.squeeze(1).long(), top_p, min_p)

    def select(self, index: torch.Tensor) -> _Filters:
        return _Filters(*(t.index_select(0, index) for t in vars(self).values()))


class _Workspace:
    """Scratch memory for [rows, vocab] temporaries, reused across calls (at most
    CHUNK_ROWS x vocab float32 each: 12.6 MB at a 49152 vocabulary; three names are used).

    Fresh buffers this large may come straight from mmap and be page-faulted in on every
    call, which measurably slows large batches. Nothing is read before it is written in the
    same call, so reuse cannot carry data between calls.
    """

    def __init__(self) -> None:
        self._buffers: dict[tuple[str, torch.device], torch.Tensor] = {}

    def get(self, name: str, rows: int, cols: int, device: torch.device) -> torch.Tensor:
        buf = self._buffers.get((name, device))
        if buf is None or buf.numel() < rows * cols:
            buf = torch.empty(rows * cols, device=device)
            self._buffers[(name, device)] = buf
        return buf[: rows * cols].view(rows, cols)


class Sampler:
    """Picks one token per row of a [N, vocab] logits tensor (CPU or CUDA, any float dtype).

    Rows with `params.seed` draw their noise from a generator seeded by (seed, number of
    output tokens so far); the others share a generator owned by the sampler, seeded with
    `seed` (or the global torch RNG when `seed` is None). Calls are serialised (the sampler
    owns scratch buffers).

    `num_threads`, if set, is the number of CPU intra-op threads for the duration of a call
    (torch.set_num_threads, restored after; it is process-wide). On a loaded machine each
    multi-threaded op can wait a scheduler tick for its second thread, and the sampler's many
    ~1 ms ops suffer more from that than they gain from the thread.
    """

    def __init__(self, seed: int | None = 0, *, num_threads: int | None = None) -> None:
        self._seed = seed
        self._num_threads = num_threads
        self._generators: dict[torch.device, torch.Generator] = {}
        self._ws = _Workspace()
        self._lock = threading.Lock()

    def _shared_generator(self, device: torch.device) -> torch.Generator | None:
        if self._seed is None:
            return None
        gen = self._generators.get(device)
        if gen is None:
            gen = torch.Generator(device=device)
            gen.manual_seed(self._seed)
            self._generators[device] = gen
        return gen

    def __call__(self, logits: torch.Tensor, seqs: list[Sequence]) -> SamplerOutput:
        if logits.dim() != 2 or logits.shape[0] != len(seqs):
            raise ValueError(
                f"logits must be [num_seqs={len(seqs)}, vocab], got {tuple(logits.shape)}"
            )
        with self._lock, _intra_op_threads(self._num_threads):
            if len(seqs) <= CHUNK_ROWS:
                return self._sample_chunk(logits, seqs)
            # Row chunks keep each pass's working set in cache: one pass over 256 x 49152
            # float32 logits streams 50 MB, and the pipeline makes several.
            out = SamplerOutput(token_ids=[], logprobs=[])
            for start in range(0, len(seqs), CHUNK_ROWS):
                end = start + CHUNK_ROWS
                part = self._sample_chunk(logits[start:end], seqs[start:end])
                out.token_ids += part.token_ids
                out.logprobs += part.logprobs
            return out

    def _sample_chunk(self, logits: torch.Tensor, seqs: list[Sequence]) -> SamplerOutput:
        params = [s.params for s in seqs]
        # `raw` may alias the caller's tensor: nothing below writes to it.
        raw = logits.float()
        x = raw
        if any(p.has_penalties for p in params):
            x = _apply_penalties(x, seqs, out=self._ws.get("penalised", *x.shape, x.device))
        if all(_is_greedy(p) for p in params):
            ids = _argmax(x)
        else:
            ids = self._sample(x, seqs)
        return _build_output(ids, raw, params, self._ws)

    def _take(self, x: torch.Tensor, rows: list[int]) -> torch.Tensor:
        """Rows of x (x itself when that is all of them: then read-only)."""
        if len(rows) == x.shape[0]:
            return x  # row lists are ascending and unique
        out = self._ws.get("rows", len(rows), x.shape[1], x.device)
        return torch.index_select(x, 0, _index(rows, x.device), out=out)

    def _sample(self, x: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
        vocab = x.shape[1]
        greedy, plain, min_p, cand = [], [], [], []
        for i, s in enumerate(seqs):
            p = s.params
            if _is_greedy(p):
                greedy.append(i)
            elif 0 < p.top_k < vocab or p.top_p < 1.0:
                cand.append(i)
            else:
                # min-p rows race apart: their mask is one scalar-threshold pass.
                (min_p if p.min_p > 0.0 else plain).append(i)
        ids = torch.empty(len(seqs), dtype=torch.long, device=x.device)
        if greedy:
            _put(ids, greedy, _argmax(self._take(x, greedy)))
        for rows in (plain, min_p):
            if rows:
                _put(ids, rows, self._sample_full(self._take(x, rows), [seqs[i] for i in rows]))
        if cand:
            sub = [seqs[i] for i in cand]
            _put(ids, cand, self._sample_candidates(self._take(x, cand), sub))
        return ids

    def _sample_full(self, x: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
        """Temperature (and min-p) sampling over the whole vocabulary."""
        filters = _Filters.build([s.params for s in seqs], x.shape[1], x.device)
        # Unnormalised probabilities, 1 for the top token: exp((x - max) / temperature).
        w = self._ws.get("work", *x.shape, x.device)
        torch.sub(x, x.amax(dim=-1, keepdim=True), out=w)
        if any(s.params.temperature != 1.0 for s in seqs):
            w.mul_(filters.inv_temp)
        w.exp_()
        min_ps = {s.params.min_p for s in seqs}
        if min_ps != {0.0}:
            # Keep w >= min_p (the top token has w = 1). A bool mask costs several passes:
            # one scalar threshold does it, after rescaling rows to a common threshold of 1.
            if len(min_ps) > 1:
                w.mul_(filters.min_p.clamp(min=_MIN_P_FLOOR).reciprocal())
                threshold = 1.0
            else:
                threshold = min_ps.pop()
            F.threshold(w, _float32_below(threshold), 0.0, inplace=True)
        return self._race_blocks(w, seqs)

    def _race_blocks(self, w: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
        """Draw a column from each row of weights w >= 0 (not normalised): race the block
        sums, then the columns of the winning block. P(i) = (S_b / S) * (w_i / S_b)."""
        rows, vocab = w.shape
        width = min(_RACE_BLOCK, vocab)
        full_blocks = vocab // width
        sums = w[:, : full_blocks * width].view(rows, full_blocks, width).sum(dim=-1)
        if full_blocks * width < vocab:
            sums = torch.cat([sums, w[:, full_blocks * width :].sum(dim=-1, keepdim=True)], dim=1)
        nblocks = sums.shape[1]
        log_noise = self._log_noise(seqs, nblocks + width, w.device)
        block = (sums.log_() - log_noise[:, :nblocks]).argmax(dim=-1, keepdim=True)
        idx = block * width + torch.arange(width, device=w.device)
        inside = idx < vocab  # the last block may be short
        idx.clamp_(max=vocab - 1)
        scores = (w.gather(1, idx) * inside).log_() - log_noise[:, nblocks:]
        return idx.gather(1, scores.argmax(dim=-1, keepdim=True)).squeeze(1)

    def _sample_candidates(self, x: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
        """top-k / top-p (and min-p) sampling over each row's candidate set."""
        filters = _Filters.build([s.params for s in seqs], x.shape[1], x.device)
        ids = torch.empty(x.shape[0], dtype=torch.long, device=x.device)
        work = self._ws.get("work", *x.shape, x.device)
        for rows, weights, tokens in _candidate_groups(x, filters, CANDIDATE_TIERS, work):
            sub = [seqs[i] for i in rows.tolist()]
            if weights.shape[1] == x.shape[1]:
                pick = self._race_blocks(weights, sub).unsqueeze(1)  # a whole sorted row
            else:
                log_noise = self._log_noise(sub, weights.shape[1], x.device)
                pick = (weights.log() - log_noise).argmax(dim=-1, keepdim=True)
            ids.index_copy_(0, rows, tokens.gather(1, pick).squeeze(1))
        return ids

    def _log_noise(self, seqs: list[Sequence], width: int, device: torch.device) -> torch.Tensor:
        """log E for [len(seqs), width] draws E ~ Exp(1): the race picks argmax(log w - log E).

        E = -log(1 - U) from float64 uniforms (exponential_ is ~4x slower on CPU; float64 keeps
        the tail of E that decides low-probability tokens). A seeded row's draws depend only on
        its seed, its output count and `width` (a function of the row alone), never on its
        batch mates.
        """
        u = torch.empty(len(seqs), width, dtype=torch.float64, device=device)
        seeded = [i for i, s in enumerate(seqs) if s.params.seed is not None]
        if len(seeded) < len(seqs):
            u.uniform_(generator=self._shared_generator(device))
        for i in seeded:
            gen = torch.Generator(device=device)
            gen.manual_seed(row_seed(seqs[i].params.seed, seqs[i].num_output_tokens))
            u[i].uniform_(generator=gen)
        e = u.neg_().log1p_().neg_()
        # A zero draw (U = 0) would make its token win whatever its weight.
        return e.clamp_min_(torch.finfo(torch.float64).tiny).log_().float()


@contextmanager
def _intra_op_threads(n: int | None) -> Iterator[None]:
    before = torch.get_num_threads()
    if n is None or n == before:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _float32_below(value: float) -> float:
    """The largest float32 strictly below `value`: F.threshold keeps x > t, we want x >= value."""
    v = torch.tensor(value, dtype=torch.float32)
    return torch.nextafter(v, torch.tensor(-1.0)).item()


def _index(rows: list[int], device: torch.device) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.long, device=device)


def _put(out: torch.Tensor, rows: list[int], values: torch.Tensor) -> None:
    out.index_copy_(0, _index(rows, out.device), values)


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


def _scratch(work: torch.Tensor | None, rows: int) -> torch.Tensor | None:
    return None if work is None else work[:rows]


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


def _apply_penalties(
    x: torch.Tensor, seqs: list[Sequence], out: torch.Tensor | None = None
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


def _build_output(
    ids: torch.Tensor, raw: torch.Tensor, params: list[SamplingParams], ws: _Workspace
) -> SamplerOutput:
    n = len(params)
    lp_rows = [i for i, p in enumerate(params) if p.logprobs is not None]
    if not lp_rows:
        return SamplerOutput(token_ids=ids.tolist(), logprobs=[None] * n)

    if len(lp_rows) == n:
        sub, lp_ids = raw, ids
    else:
        index = _index(lp_rows, raw.device)
        out = ws.get("rows", len(lp_rows), raw.shape[1], raw.device)
        sub, lp_ids = torch.index_select(raw, 0, index, out=out), ids.index_select(0, index)
    k = min(max(params[i].logprobs or 0 for i in lp_rows), raw.shape[1])
    if k:
        top_vals, top_ids = _topk(sub, k)  # sorted, best first
        m = top_vals[:, :1]
    else:
        m = sub.amax(dim=-1, keepdim=True)
    # log_softmax without materialising it: logprob = (x - max) - log(sum(exp(x - max))).
    e = torch.sub(sub, m, out=ws.get("work", *sub.shape, raw.device))
    log_z = e.exp_().sum(dim=-1, keepdim=True).log_()
    chosen = (sub.gather(1, lp_ids.unsqueeze(1)) - m - log_z).squeeze(1)
    parts = [ids.double(), chosen.double()]
    if k:
        parts += [(top_vals - m - log_z).double().flatten(), top_ids.double().flatten()]
    # One device->host transfer; float64 holds token ids exactly.
    flat = torch.cat(parts).tolist()

    token_ids = [int(t) for t in flat[:n]]
    chosen_lp = flat[n : n + len(lp_rows)]
    top_vals_flat = flat[n + len(lp_rows) : n + len(lp_rows) * (1 + k)]
    top_ids_flat = flat[n + len(lp_rows) * (1 + k) :]
    out_lp: list[TokenLogprob | None] = [None] * n
    for j, i in enumerate(lp_rows):
        want = min(params[i].logprobs or 0, k)
        base = j * k
        top = [(int(top_ids_flat[base + r]), top_vals_flat[base + r]) for r in range(want)]
        out_lp[i] = TokenLogprob(token_id=token_ids[i], logprob=chosen_lp[j], top=top)
    return SamplerOutput(token_ids=token_ids, logprobs=out_lp)
