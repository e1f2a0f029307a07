"""The `Sampler`: one token per row of a step's logits, vectorised over the batch.

It splits the batch by kind (greedy, plain temperature, min-p, top-k / top-p) so each group
runs only the passes it needs, in the order grammar mask -> penalties -> (greedy: argmax) ->
temperature -> top-k -> top-p -> min-p -> sample.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from tokenfactory.engine.sampling.blocks import _argmax
from tokenfactory.engine.sampling.candidates import CANDIDATE_TIERS, _candidate_groups, _Filters
from tokenfactory.engine.sampling.grammar_mask import GrammarMasks, apply_grammar_masks
from tokenfactory.engine.sampling.logprobs import DeviceOutput, SamplerOutput, device_output
from tokenfactory.engine.sampling.penalties import _apply_penalties
from tokenfactory.engine.sampling.pending import PendingSample
from tokenfactory.engine.sampling.race import _log_noise, _race_blocks
from tokenfactory.engine.sampling.row import SamplingRow
from tokenfactory.engine.sampling.workspace import _index, _Workspace
from tokenfactory.engine.sampling_params import SamplingParams

# Temperatures below this are treated as greedy: dividing by them only amplifies rounding noise.
GREEDY_TEMPERATURE = 1e-5

# Rows sampled together at most (see Sampler.__call__).
CHUNK_ROWS = 64
# min-p thresholds are applied as e * (1 / min_p) >= 1: the clamp keeps that finite. Tokens
# below 1e-30 of the top token's probability cannot be drawn at float32 precision anyway.
_MIN_P_FLOOR = 1e-30


def _is_greedy(p: SamplingParams) -> bool:
    return p.temperature < GREEDY_TEMPERATURE


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

    def __call__(
        self,
        logits: torch.Tensor,
        seqs: Sequence[SamplingRow],
        grammar_masks: GrammarMasks | None = None,
    ) -> SamplerOutput:
        """`grammar_masks`: constrained rows' masks, applied to `logits` in place first (so
        logprobs describe the model's distribution over the tokens the grammar allows)."""
        return self.launch(logits, seqs, grammar_masks).result()

    def launch(
        self,
        logits: torch.Tensor,
        seqs: Sequence[SamplingRow],
        grammar_masks: GrammarMasks | None = None,
    ) -> PendingSample:
        """As `__call__`, with the result left on the device until asked for: on CUDA nothing
        here waits for the device (the rows' kinds and parameters are host data)."""
        if logits.dim() != 2 or logits.shape[0] != len(seqs):
            raise ValueError(
                f"logits must be [num_seqs={len(seqs)}, vocab], got {tuple(logits.shape)}"
            )
        with self._lock, _intra_op_threads(self._num_threads):
            if grammar_masks is not None:
                apply_grammar_masks(logits, grammar_masks)
            # Row chunks keep each pass's working set in cache: one pass over 256 x 49152
            # float32 logits streams 50 MB, and the pipeline makes several.
            parts = [
                self._sample_chunk(logits[i : i + CHUNK_ROWS], seqs[i : i + CHUNK_ROWS])
                for i in range(0, len(seqs), CHUNK_ROWS)
            ]
            return PendingSample(parts)

    def _sample_chunk(self, logits: torch.Tensor, seqs: Sequence[SamplingRow]) -> DeviceOutput:
        params = [s.params for s in seqs]
        # `raw` may alias the caller's tensor: nothing below writes to it.
        raw = logits.float()
        x = raw
        if any(p.has_penalties for p in params):
            work = self._ws.get("penalised", x.shape[0], x.shape[1], x.device)
            x = _apply_penalties(x, seqs, out=work)
        if all(_is_greedy(p) for p in params):
            ids = _argmax(x)
        else:
            ids = self._sample(x, seqs)
        return device_output(ids, raw, params, self._ws)

    def _take(self, x: torch.Tensor, rows: list[int]) -> torch.Tensor:
        """Rows of x (x itself when that is all of them: then read-only)."""
        if len(rows) == x.shape[0]:
            return x  # row lists are ascending and unique
        out = self._ws.get("rows", len(rows), x.shape[1], x.device)
        return torch.index_select(x, 0, _index(rows, x.device), out=out)

    def _sample(self, x: torch.Tensor, seqs: Sequence[SamplingRow]) -> torch.Tensor:
        vocab = x.shape[1]
        greedy: list[int] = []
        plain: list[int] = []
        min_p: list[int] = []
        cand: list[int] = []
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

    def _sample_full(self, x: torch.Tensor, seqs: Sequence[SamplingRow]) -> torch.Tensor:
        """Temperature (and min-p) sampling over the whole vocabulary."""
        filters = _Filters.build([s.params for s in seqs], x.shape[1], x.device)
        # Unnormalised probabilities, 1 for the top token: exp((x - max) / temperature).
        w = self._ws.get("work", x.shape[0], x.shape[1], x.device)
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
        return _race_blocks(w, seqs, self._shared_generator)

    def _sample_candidates(self, x: torch.Tensor, seqs: Sequence[SamplingRow]) -> torch.Tensor:
        """top-k / top-p (and min-p) sampling over each row's candidate set."""
        filters = _Filters.build([s.params for s in seqs], x.shape[1], x.device)
        ids = torch.empty(x.shape[0], dtype=torch.long, device=x.device)
        work = self._ws.get("work", x.shape[0], x.shape[1], x.device)
        for rows, weights, tokens in _candidate_groups(x, filters, CANDIDATE_TIERS, work):
            sub = [seqs[i] for i in rows.tolist()]
            if weights.shape[1] == x.shape[1]:
                # A whole sorted row: race it like a full-vocabulary row.
                pick = _race_blocks(weights, sub, self._shared_generator).unsqueeze(1)
            else:
                log_noise = _log_noise(sub, weights.shape[1], x.device, self._shared_generator)
                pick = (weights.log() - log_noise).argmax(dim=-1, keepdim=True)
            ids.index_copy_(0, rows, tokens.gather(1, pick).squeeze(1))
        return ids


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


def _put(out: torch.Tensor, rows: list[int], values: torch.Tensor) -> None:
    out.index_copy_(0, _index(rows, out.device), values)
