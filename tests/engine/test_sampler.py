"""Sampler: greedy, filters, seeded reproducibility, penalties, logprobs."""

from __future__ import annotations

import math

import pytest
import torch

from tokenfactory.engine.sampling.blocks import _argmax, _topk
from tokenfactory.engine.sampling.candidates import _candidate_groups, _Filters
from tokenfactory.engine.sampling.logprobs import SamplerOutput
from tokenfactory.engine.sampling.penalties import _apply_penalties
from tokenfactory.engine.sampling.sampler import Sampler
from tokenfactory.engine.sampling.seeds import row_seed
from tokenfactory.engine.sampling_params import SamplingParams
from tokenfactory.engine.sequence import Sequence

VOCAB = 64


def seq(output: list[int] | None = None, prompt: list[int] | None = None, **kw: object) -> Sequence:
    return Sequence(
        request_id="r",
        prompt_token_ids=list(prompt or [0]),
        params=SamplingParams(**kw),  # type: ignore[arg-type]
        output_token_ids=list(output or []),
    )


def rand_logits(n: int, vocab: int = VOCAB, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, vocab, generator=torch.Generator().manual_seed(seed)) * 3


def test_greedy_is_argmax() -> None:
    logits = rand_logits(8)
    out = Sampler()(logits, [seq(temperature=0.0) for _ in range(8)])
    assert isinstance(out, SamplerOutput)
    assert out.token_ids == logits.argmax(dim=-1).tolist()
    assert out.logprobs == [None] * 8


def test_greedy_does_not_modify_input() -> None:
    logits = rand_logits(2)
    before = logits.clone()
    Sampler()(logits, [seq(temperature=0.7, repetition_penalty=1.5, output=[1, 2])] * 2)
    assert torch.equal(logits, before)


@pytest.mark.parametrize(
    "kw", [{"top_k": 1}, {"top_p": 1e-6}, {"min_p": 1.0}, {"temperature": 1e-7}]
)
def test_degenerate_filters_are_greedy(kw: dict[str, float]) -> None:
    logits = rand_logits(16, seed=1)
    out = Sampler(seed=3)(logits, [seq(temperature=kw.pop("temperature", 1.5), **kw)] * 16)
    assert out.token_ids == logits.argmax(dim=-1).tolist()


def test_mixed_greedy_and_random_rows() -> None:
    logits = rand_logits(6, seed=2)
    seqs = [seq(temperature=0.0 if i % 2 == 0 else 1.0) for i in range(6)]
    out = Sampler()(logits, seqs)
    greedy = logits.argmax(dim=-1).tolist()
    assert [out.token_ids[i] for i in (0, 2, 4)] == [greedy[i] for i in (0, 2, 4)]


def _sample_many(logits_row: torch.Tensor, n: int, **kw: object) -> list[int]:
    logits = logits_row.unsqueeze(0).expand(n, -1).contiguous()
    return Sampler(seed=1234)(logits, [seq(**kw) for _ in range(n)]).token_ids  # type: ignore[arg-type]


def test_top_k_restricts_support() -> None:
    row = torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0, 0.0])
    assert set(_sample_many(row, 2000, temperature=2.0, top_k=2)) == {0, 1}


def test_top_p_keeps_smallest_nucleus() -> None:
    # probs ~ [0.5, 0.3, 0.2]: top_p=0.7 needs tokens 0 and 1; top_p=0.5 needs only token 0.
    row = torch.tensor([0.5, 0.3, 0.2]).log()
    assert set(_sample_many(row, 2000, top_p=0.7)) == {0, 1}
    assert set(_sample_many(row, 500, top_p=0.4)) == {0}


def test_min_p_filters_relative_to_top() -> None:
    # probs [0.5, 0.3, 0.15, 0.05]; min_p=0.5 keeps p >= 0.25 -> tokens 0 and 1.
    row = torch.tensor([0.5, 0.3, 0.15, 0.05]).log()
    assert set(_sample_many(row, 2000, min_p=0.5)) == {0, 1}
    assert set(_sample_many(row, 4000, min_p=0.05)) == {0, 1, 2, 3}


def _chi2(counts: list[int], probs: list[float]) -> float:
    n = sum(counts)
    return sum((c - n * p) ** 2 / (n * p) for c, p in zip(counts, probs, strict=True))


def test_temperature_sampling_follows_distribution() -> None:
    row = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0])
    temperature, n = 0.5, 20000
    ids = _sample_many(row, n, temperature=temperature)
    counts = [ids.count(i) for i in range(5)]
    expected = torch.softmax(row / temperature, dim=-1).tolist()
    wrong = torch.softmax(row, dim=-1).tolist()  # temperature ignored
    # 4 degrees of freedom: p(chi2 > 30) ~ 5e-6. The wrong distribution is far off.
    assert _chi2(counts, expected) < 30
    assert _chi2(counts, wrong) > 1000


def test_top_k_renormalises_over_kept_tokens() -> None:
    row = torch.tensor([1.0, 0.5, 0.0, 3.0])
    ids = _sample_many(row, 20000, top_k=3)
    counts = [ids.count(i) for i in (0, 1, 3)]
    expected = torch.softmax(row[[0, 1, 3]], dim=-1).tolist()
    assert ids.count(2) == 0
    assert _chi2(counts, expected) < 25


def test_seeded_row_same_alone_and_in_batch() -> None:
    logits = rand_logits(5, seed=4)
    target = seq(seed=42, temperature=1.0, output=[3, 4, 5])
    alone = Sampler(seed=0)(logits[2:3], [target]).token_ids[0]
    for sampler_seed in range(5):
        mates = [
            seq(temperature=1.3),
            seq(top_k=5, seed=7),
            target,
            seq(temperature=0.0),
            seq(top_p=0.5, min_p=0.1),
        ]
        batch = Sampler(seed=sampler_seed)(logits, mates).token_ids
        assert batch[2] == alone


def test_seeded_sequence_replays_after_preemption() -> None:
    logits = torch.zeros(1, 1000)  # uniform: any deviation in noise shows up
    sampler = Sampler()

    def generate(n: int) -> list[int]:
        s = seq(seed=9)
        for _ in range(n):
            s.output_token_ids.append(sampler(logits, [s]).token_ids[0])
        return s.output_token_ids

    first = generate(10)
    assert generate(10) == first  # same seed, same tokens, independent of sampler state
    assert len(set(first)) > 1  # the step is part of the seed


def test_different_seeds_differ() -> None:
    logits = torch.zeros(1, 1000)
    a = [Sampler()(logits, [seq(seed=1, output=[0] * i)]).token_ids[0] for i in range(8)]
    b = [Sampler()(logits, [seq(seed=2, output=[0] * i)]).token_ids[0] for i in range(8)]
    assert a != b


def test_unseeded_rows_vary_and_sampler_seed_reproduces() -> None:
    logits = torch.zeros(32, 1000)
    seqs = [seq() for _ in range(32)]
    first = Sampler(seed=5)(logits, seqs).token_ids
    assert Sampler(seed=5)(logits, seqs).token_ids == first
    assert len(set(first)) > 20
    assert Sampler(seed=6)(logits, seqs).token_ids != first


def test_row_seed_mixes() -> None:
    seeds = {row_seed(s, t) for s in range(-5, 5) for t in range(50)}
    assert len(seeds) == 500
    assert all(0 <= x < 2**64 for x in seeds)


# --- penalties: checked through greedy picks on a tiny vocab ---------------------------------


def _penalised(logits: list[float], s: Sequence) -> list[float]:
    # The public output holds only ids and raw logprobs, so read the penalised logits here.
    return _apply_penalties(torch.tensor([logits]), [s])[0].tolist()


def test_repetition_penalty_over_prompt_and_output() -> None:
    s = seq(prompt=[0, 1], output=[1, 2], repetition_penalty=2.0, temperature=0.0)
    got = _penalised([4.0, -4.0, 1.0, 3.0, -1.0], s)
    assert got == pytest.approx([2.0, -8.0, 0.5, 3.0, -1.0])


def test_presence_and_frequency_penalties_over_output_only() -> None:
    s = seq(prompt=[3, 3], output=[0, 0, 0, 2], presence_penalty=0.5, frequency_penalty=0.25)
    got = _penalised([1.0, 1.0, 1.0, 1.0], s)
    # token 0: 3 times -> 1 - 0.5 - 0.75; token 2: once -> 1 - 0.5 - 0.25; prompt-only 3 untouched
    assert got == pytest.approx([-0.25, 1.0, 0.25, 1.0])


def test_penalties_with_empty_output() -> None:
    s = seq(prompt=[1], output=[], presence_penalty=1.0, frequency_penalty=1.0)
    assert _penalised([1.0, 2.0, 3.0], s) == pytest.approx([1.0, 2.0, 3.0])
    s = seq(prompt=[1], output=[], repetition_penalty=2.0)
    assert _penalised([1.0, 2.0, 3.0], s) == pytest.approx([1.0, 1.0, 3.0])


def test_penalties_change_greedy_choice_only_on_their_rows() -> None:
    logits = torch.tensor([[3.0, 2.9, 0.0], [3.0, 2.9, 0.0]])
    seqs = [
        seq(output=[0], presence_penalty=1.0, temperature=0.0),
        seq(output=[0], temperature=0.0),
    ]
    assert Sampler()(logits, seqs).token_ids == [1, 0]


# --- logprobs ---------------------------------------------------------------------------------


def test_logprobs_are_raw_log_softmax_with_sorted_top_k() -> None:
    logits = rand_logits(3, seed=5)
    seqs = [
        seq(logprobs=3, temperature=0.0),
        seq(),  # no logprobs
        seq(logprobs=0, repetition_penalty=1.8, output=[1, 2], temperature=0.8),
    ]
    out = Sampler()(logits, seqs)
    ref = torch.log_softmax(logits, dim=-1)
    assert out.logprobs[1] is None
    for i in (0, 2):
        lp = out.logprobs[i]
        assert lp is not None
        assert lp.token_id == out.token_ids[i]
        assert lp.logprob == pytest.approx(ref[i, lp.token_id].item(), abs=1e-5)
    top = out.logprobs[0].top  # type: ignore[union-attr]
    assert len(top) == 3
    assert [t for t, _ in top] == ref[0].topk(3).indices.tolist()
    assert [v for _, v in top] == pytest.approx(ref[0].topk(3).values.tolist(), abs=1e-5)
    assert [v for _, v in top] == sorted((v for _, v in top), reverse=True)
    assert out.logprobs[2].top == []  # type: ignore[union-attr]


def test_logprobs_k_larger_than_vocab() -> None:
    out = Sampler()(torch.tensor([[0.0, 1.0, 2.0]]), [seq(logprobs=20, temperature=0.0)])
    lp = out.logprobs[0]
    assert lp is not None and [t for t, _ in lp.top] == [2, 1, 0]
    assert math.isclose(sum(math.exp(v) for _, v in lp.top), 1.0, rel_tol=1e-5)


# --- dtypes -----------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_low_precision_logits_accepted(dtype: torch.dtype) -> None:
    logits = rand_logits(4, seed=6).to(dtype)
    seqs = [
        seq(temperature=0.0, logprobs=2),
        seq(top_k=4, top_p=0.9, seed=1),
        seq(presence_penalty=0.5, output=[1]),
        seq(min_p=0.2),
    ]
    out = Sampler()(logits, seqs)
    assert out.token_ids[0] == logits.float().argmax(dim=-1)[0].item()
    assert all(0 <= t < VOCAB for t in out.token_ids)
    assert out.logprobs[0] is not None and len(out.logprobs[0].top) == 2


def test_shape_mismatch_rejected() -> None:
    with pytest.raises(ValueError):
        Sampler()(torch.zeros(2, 4), [seq()])


# --- large vocabularies: block argmax / top-k, candidate tiers, two-level race ----------------
# The paths above run on a 64-token vocabulary, where every top-k/top-p row is fully sorted and
# the race has one block. These use vocabularies with several blocks and a short last block.

BIG = 1500  # 5 full race blocks of 256 + a short one of 220


def _filters(n: int, vocab: int, **kw: object) -> _Filters:
    return _Filters.build([SamplingParams(**kw)] * n, vocab, torch.device("cpu"))  # type: ignore[arg-type]


def _reference_keep(x: torch.Tensor, f: _Filters) -> torch.Tensor:
    """The full-sort definition (kept tokens as a [rows, vocab] mask), as the sampler had it."""
    scaled = x * f.inv_temp
    vals, idx = scaled.sort(dim=-1, descending=True)
    k = torch.where(f.top_k > 0, f.top_k, x.shape[1])
    kth = vals.gather(1, (k - 1).unsqueeze(1))
    vals = vals.masked_fill(vals < kth, float("-inf"))
    probs = vals.softmax(dim=-1)
    vals = vals.masked_fill(probs.cumsum(dim=-1) - probs >= f.top_p, float("-inf"))
    probs = vals.softmax(dim=-1)
    keep = probs >= f.min_p * probs.amax(dim=-1, keepdim=True)
    return torch.zeros_like(keep).scatter_(1, idx, keep & (vals > float("-inf")))


def _candidate_keep(
    x: torch.Tensor, f: _Filters, tiers: tuple[int, ...], work: torch.Tensor | None = None
) -> tuple[torch.Tensor, dict[int, int]]:
    """Kept mask from the candidate path, and the candidate-set width each row settled at."""
    keep = torch.zeros_like(x, dtype=torch.bool)
    width_of = {}
    for rows, weights, tokens in _candidate_groups(x, f, tiers, work):
        for r, w, t in zip(rows.tolist(), weights, tokens, strict=True):
            keep[r, t[w > 0]] = True
            width_of[r] = weights.shape[1]
    return keep, width_of


def _peaky_and_flat(rows: int, vocab: int, seed: int = 0) -> torch.Tensor:
    """Rows 0, 3, 6...: a few dominant tokens (top-p nucleus well inside 64 tokens); 1, 4...:
    a broad head (nucleus of hundreds); 2, 5...: near-uniform (thousands)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, vocab, generator=g)
    x[0::3] *= 0.5
    x[0::3, :8] += torch.linspace(14, 10, 8)
    x[1::3] *= 2.5
    return x[:, torch.randperm(vocab, generator=g)]


@pytest.mark.parametrize("vocab", [1000, 12288, 12345])
def test_block_argmax_matches_torch(vocab: int) -> None:
    x = rand_logits(16, vocab, seed=7)
    x[3] = 0.0  # all tied: the first index wins
    x[4, -1] = 100.0  # the max in the short last block
    x[5, [10, 4000 % vocab, vocab - 3]] = 50.0  # ties across blocks
    x[6] = float("-inf")
    assert torch.equal(_argmax(x), x.argmax(dim=-1))


@pytest.mark.parametrize("k", [1, 5, 20, 64, 200, 600])
def test_block_topk_matches_torch(k: int) -> None:
    for vocab in (49152, 12345):
        x = rand_logits(4, vocab, seed=k)
        x[1] = torch.randint(0, 6, (vocab,)).float()  # heavy ties
        vals, idx = _topk(x, k)
        ref = x.topk(k, dim=-1).values
        assert torch.equal(vals, ref)
        assert torch.equal(x.gather(1, idx), vals)
        assert all(len(set(row)) == k for row in idx.tolist())


@pytest.mark.parametrize(
    "kw",
    [
        {"top_p": 0.9},
        {"top_p": 0.5, "temperature": 0.7},
        {"top_p": 0.95, "temperature": 1.5, "min_p": 0.02},
        {"top_k": 40, "top_p": 0.8},
        {"top_k": 100},
        {"top_k": 3000, "top_p": 0.99},  # beyond every tier: sorted
        {"top_k": 30, "min_p": 0.3},
    ],
)
def test_candidate_filters_equal_full_sort(kw: dict[str, float]) -> None:
    x = _peaky_and_flat(32, 8000)
    f = _filters(32, 8000, **kw)
    ref = _reference_keep(x, f)
    for tiers in ((64,), (64, 512, 4096), ()):
        keep, _ = _candidate_keep(x, f, tiers)
        assert torch.equal(keep, ref), tiers


def test_candidate_filters_mixed_rows_equal_full_sort() -> None:
    # Rows starting at different tiers share a call (the top-p normaliser is computed from the
    # first tier's input, here a subset of the rows).
    kinds: list[dict[str, object]] = [
        {"top_p": 0.9},
        {"top_k": 300, "top_p": 0.9, "temperature": 0.6},
        {"top_k": 5000},
        {"top_p": 0.7, "temperature": 1.7, "min_p": 0.01},
        {"top_k": 20},
    ]
    params = [SamplingParams(**kinds[i % len(kinds)]) for i in range(30)]  # type: ignore[arg-type]
    x = _peaky_and_flat(30, 8000, seed=2)
    f = _Filters.build(params, 8000, torch.device("cpu"))
    ref = _reference_keep(x, f)
    keep, _ = _candidate_keep(x, f, (64, 512, 4096), work=torch.empty_like(x))
    assert torch.equal(keep, ref)


def test_top_p_candidates_settle_or_fall_back_exactly() -> None:
    x = _peaky_and_flat(30, 8000, seed=1)
    f = _filters(30, 8000, top_p=0.9)
    ref = _reference_keep(x, f)
    # 64 candidates settle the peaky rows; the others fall back to a full sort.
    keep, width_of = _candidate_keep(x, f, (64,))
    assert torch.equal(keep, ref)
    assert {width_of[i] for i in range(0, 30, 3)} == {64}
    assert {width_of[i] for i in range(30) if i % 3} == {8000}
    # Larger tiers settle the broad-head rows; near-uniform rows skip straight to the sort.
    keep, width_of = _candidate_keep(x, f, (64, 512, 4096))
    assert torch.equal(keep, ref)
    assert {width_of[i] for i in range(1, 30, 3)} <= {512, 4096}
    assert {width_of[i] for i in range(2, 30, 3)} == {8000}


def test_top_k_ties_past_the_candidates_fall_back() -> None:
    # 100 tokens tie at the top: top_k=10 keeps all of them (ties with the k-th are kept),
    # more than a 64-candidate set can show.
    x = torch.zeros(2, 5000)
    x[:, 1000:1100] = 5.0
    f = _filters(2, 5000, top_k=10)
    keep, width_of = _candidate_keep(x, f, (64, 512))
    assert torch.equal(keep, _reference_keep(x, f))
    assert int(keep.sum()) == 200 and set(width_of.values()) == {512}


def _counts(ids: list[int], buckets: list[list[int]]) -> list[int]:
    where = {t: b for b, toks in enumerate(buckets) for t in toks}
    out = [0] * (len(buckets) + 1)
    for t in ids:
        out[where.get(t, len(buckets))] += 1
    return out


def _expected(probs: torch.Tensor, buckets: list[list[int]]) -> list[float]:
    p = [float(probs[b].sum()) for b in buckets]
    return p + [1.0 - sum(p)]


def _sample_big(row: torch.Tensor, n: int, **kw: object) -> list[int]:
    sampler, ids = Sampler(seed=99), []
    for _ in range(n // 1000):
        logits = row.unsqueeze(0).expand(1000, -1).contiguous()
        ids += sampler(logits, [seq(**kw) for _ in range(1000)]).token_ids  # type: ignore[arg-type]
    return ids


def _big_row() -> torch.Tensor:
    # Heavy tokens in different race blocks, one in the short last block; a long light tail.
    row = torch.randn(BIG, generator=torch.Generator().manual_seed(11)) * 0.5
    row[[7, 300, 777, 1290, 1499]] = torch.tensor([4.0, 3.5, 3.0, 2.5, 3.2])
    return row


def test_two_level_race_follows_distribution() -> None:
    row, temperature = _big_row(), 0.8
    heavy = [7, 300, 777, 1290, 1499]
    buckets = [[t] for t in heavy] + [
        [t for t in range(256, 512) if t not in heavy],
        [t for t in range(1280, BIG) if t not in heavy],  # the short last block
    ]
    ids = _sample_big(row, 10000, temperature=temperature)
    counts = _counts(ids, buckets)
    expected = _expected(torch.softmax(row.double() / temperature, dim=-1), buckets)
    wrong = _expected(torch.softmax(row.double(), dim=-1), buckets)
    # 7 degrees of freedom: p(chi2 > 35) ~ 1e-5.
    assert _chi2(counts, expected) < 35
    assert _chi2(counts, wrong) > 200


@pytest.mark.parametrize("top_p, kept", [(0.4, (64, 512)), (0.8, (512, BIG))])
def test_candidate_race_follows_distribution(top_p: float, kept: tuple[int, int]) -> None:
    # top_p=0.4 keeps the heavy tokens and ~280 others: settled by 512 candidates;
    # top_p=0.8 keeps ~900: the sorted row, raced by blocks.
    row = _big_row()
    f = _filters(1, BIG, top_p=top_p)
    keep = _reference_keep(row.unsqueeze(0), f)[0]
    assert kept[0] < int(keep.sum()) < kept[1]
    probs = torch.softmax(row.double(), dim=-1) * keep
    probs /= probs.sum()
    buckets = [[7], [300], [777], [1290], [1499]]
    ids = _sample_big(row, 6000, top_p=top_p)
    assert all(keep[t] for t in ids)
    counts = _counts(ids, buckets)
    # 5 degrees of freedom: p(chi2 > 30) ~ 1.5e-5, for the right and the unfiltered distribution.
    assert _chi2(counts, _expected(probs, buckets)) < 30
    unfiltered = _expected(torch.softmax(row.double(), dim=-1), buckets)
    assert _chi2(counts, unfiltered) > 30


def test_min_p_with_mixed_values_on_big_vocab() -> None:
    row = _big_row()
    probs = torch.softmax(row, dim=-1)
    logits = row.unsqueeze(0).expand(400, -1).contiguous()
    seqs = [seq(min_p=0.3 if i % 2 else 0.05) for i in range(400)]
    ids = Sampler(seed=5)(logits, seqs).token_ids
    for i, t in enumerate(ids):
        assert probs[t] >= (0.3 if i % 2 else 0.05) * probs.max()
    assert {ids[i] for i in range(1, 400, 2)} == {7, 300, 777, 1499}  # p >= 0.3 p_max


def test_seeded_rows_independent_of_batch_on_big_vocab() -> None:
    x = _peaky_and_flat(6, 8000, seed=3)
    targets = [
        seq(seed=1, temperature=0.9, output=[1]),  # two-level race
        seq(seed=2, top_p=0.9),  # peaky row: 64 candidates
        seq(seed=3, top_p=0.9, output=[5, 6]),  # flat row: sorted fallback
        seq(seed=4, top_k=100, min_p=0.1),
    ]
    alone = [Sampler(seed=0)(x[i : i + 1], [s]).token_ids[0] for i, s in enumerate(targets)]
    mates = [seq(temperature=0.0), seq(top_p=0.5, top_k=2000)]
    for sampler_seed in range(3):
        batch = Sampler(seed=sampler_seed)(x, targets + mates).token_ids
        assert batch[:4] == alone


def test_logprobs_on_big_vocab() -> None:
    logits = rand_logits(5, 49152, seed=8)
    seqs = [seq(logprobs=20, temperature=0.0), seq(), seq(logprobs=5, top_p=0.9)] + [seq()] * 2
    out = Sampler()(logits, seqs)
    ref = torch.log_softmax(logits, dim=-1)
    for i, k in ((0, 20), (2, 5)):
        lp = out.logprobs[i]
        assert lp is not None and lp.token_id == out.token_ids[i]
        assert lp.logprob == pytest.approx(ref[i, lp.token_id].item(), abs=1e-5)
        top = ref[i].topk(k)
        assert [t for t, _ in lp.top] == top.indices.tolist()
        assert [v for _, v in lp.top] == pytest.approx(top.values.tolist(), abs=1e-5)
    assert out.token_ids[0] == logits[0].argmax().item()


def _reference_penalties(x: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
    """Dense count tensors, as the sampler had it."""
    vocab, out = x.shape[1], x.clone()
    for i, s in enumerate(seqs):
        p = s.params
        out_counts = torch.bincount(torch.tensor(s.output_token_ids, dtype=torch.long), None, vocab)
        seen = out_counts > 0
        seen[torch.tensor(s.prompt_token_ids, dtype=torch.long)] = True
        row = out[i]
        if p.repetition_penalty != 1.0:
            rep = p.repetition_penalty
            row = torch.where(seen, torch.where(row > 0, row / rep, row * rep), row)
        row = row - p.frequency_penalty * out_counts - p.presence_penalty * (out_counts > 0)
        out[i] = row
    return out


def test_penalties_match_dense_reference() -> None:
    vocab, rng = 3000, torch.Generator().manual_seed(12)

    def tokens(n: int) -> list[int]:
        return torch.randint(0, vocab, (n,), generator=rng).tolist()

    seqs = [
        seq(prompt=tokens(500), output=tokens(80), repetition_penalty=1.3),
        seq(prompt=tokens(50), output=tokens(300), presence_penalty=0.7, frequency_penalty=0.2),
        seq(prompt=tokens(10), output=tokens(40)),  # no penalties
        seq(
            prompt=tokens(900),
            output=tokens(200) + [5, 5, 5],
            repetition_penalty=0.8,
            presence_penalty=-0.5,
            frequency_penalty=1.5,
        ),
        seq(prompt=tokens(3), output=[], frequency_penalty=1.0),
    ]
    x = rand_logits(5, vocab, seed=13)
    got = _apply_penalties(x, seqs)
    assert torch.allclose(got, _reference_penalties(x, seqs), atol=1e-6)
    assert torch.equal(got[2], x[2])


def test_penalties_ignore_ids_outside_vocab() -> None:
    s = seq(prompt=[0, 7, 3], output=[1, 4, 4], repetition_penalty=2.0, presence_penalty=1.0)
    assert _penalised([2.0, 2.0, 2.0, 2.0], s) == pytest.approx([1.0, 0.0, 2.0, 1.0])


def test_mixed_batch_on_big_vocab_matches_greedy_rows() -> None:
    x = _peaky_and_flat(12, 8000, seed=4)
    kinds: list[dict[str, object]] = [
        {"temperature": 0.0},
        {"temperature": 0.7},
        {"min_p": 0.2},
        {"top_p": 0.9},
        {"top_k": 5},
        {"temperature": 0.0, "presence_penalty": 2.0, "output": [0]},
    ]
    seqs = [seq(**kinds[i % len(kinds)]) for i in range(12)]  # type: ignore[arg-type]
    out = Sampler()(x, seqs).token_ids
    greedy = x.argmax(dim=-1).tolist()
    assert [out[i] for i in (0, 6)] == [greedy[0], greedy[6]]
    for i in (4, 10):
        assert out[i] in x[i].topk(5).indices.tolist()


def test_non_contiguous_and_bf16_logits_on_big_vocab() -> None:
    wide = rand_logits(6, 9000, seed=14)
    seqs = [
        seq(temperature=0.0, logprobs=3),
        seq(top_p=0.9, seed=1),
        seq(temperature=0.5, seed=2),
        seq(top_k=10, seed=3),
        seq(min_p=0.5, seed=4, presence_penalty=1.0, output=[1, 2]),
        seq(temperature=0.0, repetition_penalty=1.5, output=[3]),
    ]
    x = wide[:, :8000]  # rows strided by 9000
    expected = Sampler()(x.contiguous(), seqs)
    assert Sampler()(x, seqs) == expected
    assert Sampler()(wide.t().contiguous().t()[:, :8000], seqs) == expected  # column-major
    out = Sampler()(x.to(torch.bfloat16), seqs)
    assert out.token_ids[0] == x.to(torch.bfloat16).float()[0].argmax().item()


def test_large_batch_is_sampled_in_chunks_like_small_ones() -> None:
    x = _peaky_and_flat(150, 3000, seed=5)
    kinds: list[dict[str, object]] = [
        {"temperature": 0.0},
        {"seed": 1, "top_p": 0.9},
        {"seed": 2, "temperature": 0.8, "logprobs": 2},
    ]
    seqs = [seq(**kinds[i % 3]) for i in range(150)]  # type: ignore[arg-type]
    batch = Sampler()(x, seqs)
    # Greedy and seeded rows do not depend on which chunk they land in.
    for i in (0, 1, 2, 70, 71, 149):
        alone = Sampler()(x[i : i + 1], [seqs[i]])
        assert batch.token_ids[i] == alone.token_ids[0]
        lp, lp_alone = batch.logprobs[i], alone.logprobs[0]
        assert (lp is None) == (lp_alone is None)
        if lp is not None and lp_alone is not None:
            assert [t for t, _ in lp.top] == [t for t, _ in lp_alone.top]
            assert lp.logprob == pytest.approx(lp_alone.logprob, abs=1e-6)


def test_seeded_rows_follow_distribution() -> None:
    # Each row its own seed: the per-row generators must give the same law as the shared one.
    row, heavy = _big_row(), [7, 300, 777, 1290, 1499]
    logits = row.unsqueeze(0).expand(1000, -1).contiguous()
    ids: list[int] = []
    for start in range(0, 3000, 1000):
        ids += Sampler()(logits, [seq(seed=start + i) for i in range(1000)]).token_ids
    counts = _counts(ids, [[t] for t in heavy])
    chi2 = [
        _chi2(counts, _expected(torch.softmax(row.double() / t, dim=-1), [[h] for h in heavy]))
        for t in (1.0, 0.8)
    ]
    assert chi2[0] < 30 < chi2[1], chi2
    # Seeded rows on the candidate path keep to the nucleus.
    part = Sampler()(logits, [seq(seed=i, top_p=0.4) for i in range(1000)]).token_ids
    keep = _reference_keep(row.unsqueeze(0), _filters(1, BIG, top_p=0.4))[0]
    assert all(keep[t] for t in part) and len(set(part)) > 50


def test_num_threads_applies_during_the_call_only() -> None:
    logits = rand_logits(4, 2000, seed=15)
    seqs = [seq(seed=i, top_p=0.9) for i in range(4)]
    before = torch.get_num_threads()
    out = Sampler(num_threads=1)(logits, seqs)
    assert torch.get_num_threads() == before
    assert out == Sampler()(logits, seqs)


def test_launch_holds_the_ids_on_the_device_and_the_result_on_request() -> None:
    """`launch` is `__call__` with the host copy deferred: the same ids and logprobs, the ids
    also as a tensor (what the next step's decodes read), over several row chunks."""
    n = 150  # three chunks of CHUNK_ROWS
    logits = rand_logits(n, seed=3)
    rows = [
        seq(temperature=0.0 if i % 3 else 0.9, seed=i, logprobs=2 if i % 5 == 0 else None)
        for i in range(n)
    ]
    want = Sampler(seed=1)(logits.clone(), rows)
    pending = Sampler(seed=1).launch(logits.clone(), rows)
    assert pending.ready_at is not None  # on the CPU the work is done when launch returns
    assert pending.token_ids.tolist() == want.token_ids
    got = pending.result()
    assert got.token_ids == want.token_ids
    assert [lp and (lp.token_id, lp.logprob, lp.top) for lp in got.logprobs] == [
        lp and (lp.token_id, lp.logprob, lp.top) for lp in want.logprobs
    ]
    assert pending.result() is got  # brought over once
