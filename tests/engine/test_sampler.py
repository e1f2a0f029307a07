"""Sampler: greedy, filters, seeded reproducibility, penalties, logprobs."""

from __future__ import annotations

import math

import pytest
import torch

from tokenfactory.engine.sampler import Sampler, SamplerOutput, _apply_penalties, row_seed
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
