"""Sampler: turns one step's logits into next tokens (and logprobs), vectorised over the batch.

Order per row, as in vLLM: penalties -> (greedy: argmax) -> temperature -> top-k -> top-p
-> min-p -> sample. Logprobs describe the model's raw distribution (before any of that).
"""

from __future__ import annotations

from collections.abc import Sequence as Seq
from dataclasses import dataclass

import torch

from tokenfactory.engine.sampling_params import SamplingParams
from tokenfactory.engine.sequence import Sequence

# Temperatures below this are treated as greedy: dividing by them only amplifies rounding noise.
GREEDY_TEMPERATURE = 1e-5

_MASK64 = (1 << 64) - 1


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


class Sampler:
    """Picks one token per row of a [N, vocab] logits tensor (CPU or CUDA, any float dtype).

    Rows with `params.seed` draw their noise from a generator seeded by (seed, number of
    output tokens so far); the others share a generator owned by the sampler, seeded with
    `seed` (or the global torch RNG when `seed` is None).
    """

    def __init__(self, seed: int | None = 0) -> None:
        self._seed = seed
        self._generators: dict[torch.device, torch.Generator] = {}

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
        params = [s.params for s in seqs]
        # `raw` may alias the caller's tensor: everything below is out of place.
        raw = logits.float()
        x = raw
        if any(p.has_penalties for p in params):
            x = _apply_penalties(x, seqs)
        if all(_is_greedy(p) for p in params):
            ids = x.argmax(dim=-1)
        else:
            ids = self._sample(x, seqs)
        return _build_output(ids, raw, params)

    def _sample(self, x: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
        params = [s.params for s in seqs]
        device, vocab = x.device, x.shape[1]
        greedy = [_is_greedy(p) for p in params]
        # Greedy rows run through the pipeline as no-ops (temperature 1, filters off) and
        # take the argmax at the end.
        rows = [
            (1.0, 0, 1.0, 0.0)
            if g
            else (p.temperature, p.top_k if 0 < p.top_k < vocab else 0, p.top_p, p.min_p)
            for p, g in zip(params, greedy, strict=True)
        ]
        # One host->device copy for all per-row settings.
        table = torch.tensor(rows, dtype=torch.float32, device=device)
        temps, top_k, top_p, min_p = table.unbind(dim=1)

        scaled = x
        if any(r[0] != 1.0 for r in rows):
            scaled = x / temps.unsqueeze(1)
        use_top_k = any(r[1] > 0 for r in rows)
        use_top_p = any(r[2] < 1.0 for r in rows)
        if use_top_k or use_top_p:
            scaled = _top_k_top_p(
                scaled,
                torch.where(top_k > 0, top_k, vocab).long() if use_top_k else None,
                torch.where(top_p < 1.0, top_p, float("inf")) if use_top_p else None,
            )
        probs = scaled.softmax(dim=-1)
        if any(r[3] > 0.0 for r in rows):
            probs = _min_p(probs, min_p)

        noise = self._noise(probs, seqs, greedy)
        # Exponential race: argmax(p_i / E_i), E_i ~ Exp(1), picks i with probability p_i.
        sampled = probs.div_(noise).argmax(dim=-1)
        if any(greedy):
            mask = torch.tensor(greedy, device=device)
            sampled = torch.where(mask, x.argmax(dim=-1), sampled)
        return sampled

    def _noise(self, probs: torch.Tensor, seqs: list[Sequence], greedy: Seq[bool]) -> torch.Tensor:
        noise = torch.empty_like(probs)
        seeded = [i for i, s in enumerate(seqs) if s.params.seed is not None and not greedy[i]]
        if len(seeded) < len(seqs):
            noise.exponential_(generator=self._shared_generator(probs.device))
        for i in seeded:
            gen = torch.Generator(device=probs.device)
            gen.manual_seed(row_seed(seqs[i].params.seed, seqs[i].num_output_tokens))
            noise[i].exponential_(generator=gen)
        # A zero draw would turn 0/0 into NaN, which argmax treats as the maximum.
        return noise.clamp_min_(torch.finfo(noise.dtype).tiny)


def _top_k_top_p(
    x: torch.Tensor, top_k: torch.Tensor | None, top_p: torch.Tensor | None
) -> torch.Tensor:
    """Mask (-inf) everything outside each row's top-k and top-p nucleus.

    `top_k` is vocab and `top_p` is inf on rows that do not use the filter.
    """
    vals, idx = x.sort(dim=-1, descending=True)
    if top_k is not None:
        kth = vals.gather(1, (top_k - 1).unsqueeze(1))
        vals = vals.masked_fill(vals < kth, float("-inf"))  # ties with the k-th are kept
    if top_p is not None:
        probs = vals.softmax(dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs  # exactly 0 for the top token: always kept
        vals = vals.masked_fill(mass_before >= top_p.unsqueeze(1), float("-inf"))
    return torch.empty_like(x).scatter_(1, idx, vals)


def _min_p(probs: torch.Tensor, min_p: torch.Tensor) -> torch.Tensor:
    # No renormalisation needed: the exponential race is invariant to scaling a row.
    threshold = min_p.unsqueeze(1) * probs.amax(dim=-1, keepdim=True)
    return probs.masked_fill(probs < threshold, 0.0)


def _token_counts(token_lists: list[list[int]], vocab: int, device: torch.device) -> torch.Tensor:
    """[len(token_lists), vocab] float32 occurrence counts, built with one scatter_add."""
    width = max((len(t) for t in token_lists), default=0)
    counts = torch.zeros(len(token_lists), vocab + 1, dtype=torch.float32, device=device)
    if width:
        # Pad with an extra column `vocab` that is dropped afterwards.
        padded = torch.tensor(
            [t + [vocab] * (width - len(t)) for t in token_lists], dtype=torch.long, device=device
        )
        counts.scatter_add_(1, padded, torch.ones_like(padded, dtype=torch.float32))
    return counts[:, :vocab]


def _apply_penalties(x: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
    """Repetition (prompt + output, HF style), presence and frequency (output only)."""
    rows = [i for i, s in enumerate(seqs) if s.params.has_penalties]
    device, vocab = x.device, x.shape[1]
    params = [seqs[i].params for i in rows]
    row_index = torch.tensor(rows, dtype=torch.long, device=device)
    sub = x if len(rows) == len(seqs) else x.index_select(0, row_index)

    out_counts = _token_counts([seqs[i].output_token_ids for i in rows], vocab, device)
    table = torch.tensor(
        [(p.repetition_penalty, p.frequency_penalty, p.presence_penalty) for p in params],
        dtype=torch.float32,
        device=device,
    )
    rep, freq, pres = (c.unsqueeze(1) for c in table.unbind(dim=1))

    if any(p.repetition_penalty != 1.0 for p in params):
        prompt_counts = _token_counts([seqs[i].prompt_token_ids for i in rows], vocab, device)
        seen = (prompt_counts + out_counts) > 0
        sub = torch.where(seen, torch.where(sub > 0, sub / rep, sub * rep), sub)
    if any(p.frequency_penalty != 0.0 or p.presence_penalty != 0.0 for p in params):
        sub = sub - freq * out_counts - pres * (out_counts > 0).float()

    if len(rows) == len(seqs):
        return sub
    return x.index_copy(0, row_index, sub)


def _build_output(
    ids: torch.Tensor, raw: torch.Tensor, params: list[SamplingParams]
) -> SamplerOutput:
    n = len(params)
    lp_rows = [i for i, p in enumerate(params) if p.logprobs is not None]
    if not lp_rows:
        return SamplerOutput(token_ids=ids.tolist(), logprobs=[None] * n)

    row_index = torch.tensor(lp_rows, dtype=torch.long, device=raw.device)
    sub = raw if len(lp_rows) == n else raw.index_select(0, row_index)
    logprobs = sub.log_softmax(dim=-1)
    chosen = logprobs.gather(1, ids.index_select(0, row_index).unsqueeze(1)).squeeze(1)
    k = min(max(params[i].logprobs or 0 for i in lp_rows), raw.shape[1])
    parts = [ids.double(), chosen.double()]
    if k:
        top_vals, top_ids = logprobs.topk(k, dim=-1)  # sorted, best first
        parts += [top_vals.double().flatten(), top_ids.double().flatten()]
    # One device->host transfer; float64 holds token ids exactly.
    flat = torch.cat(parts).tolist()

    token_ids = [int(t) for t in flat[:n]]
    chosen_lp = flat[n : n + len(lp_rows)]
    top_vals_flat = flat[n + len(lp_rows) : n + len(lp_rows) * (1 + k)]
    top_ids_flat = flat[n + len(lp_rows) * (1 + k) :]
    out: list[TokenLogprob | None] = [None] * n
    for j, i in enumerate(lp_rows):
        want = min(params[i].logprobs or 0, k)
        base = j * k
        top = [(int(top_ids_flat[base + r]), top_vals_flat[base + r]) for r in range(want)]
        out[i] = TokenLogprob(token_id=token_ids[i], logprob=chosen_lp[j], top=top)
    return SamplerOutput(token_ids=token_ids, logprobs=out)
