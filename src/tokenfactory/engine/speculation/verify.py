"""Verifying a draft: sample every row as if the draft so far were real, keep what matches.

A step that verifies draft d_1..d_k for a request computes logits at k + 1 positions: after
its last real token, and after each draft token. Row i is sampled exactly as a plain decode
would sample the token that follows the real tokens and d_1..d_i (same penalties over the
output so far, same seeded noise for that output position). Draft token d_{i+1} is accepted
while it equals what row i sampled; the first row that disagrees gives the step's last token,
and when all agree the extra row gives one more.

So every emitted token is the sample a plain decode would draw at its position, given the
tokens before it: greedy output is the same token for token, a seeded request's output is
the same token for token, and an unseeded one follows the target distribution exactly (each
row's noise is fresh). That is speculative rejection sampling for deterministic drafts:
d_{i+1} is kept with the target's probability of it, and otherwise the replacement is drawn
from the target distribution without d_{i+1}.
"""

from __future__ import annotations

from dataclasses import dataclass

from tokenfactory.engine.sampling_params import SamplingParams
from tokenfactory.engine.sequence import Sequence


@dataclass(frozen=True)
class DraftRow:
    """The request as row i of its verification sees it: its output continued by the first
    i draft tokens (what the sampler reads: params, prompt and output tokens)."""

    params: SamplingParams
    prompt_token_ids: list[int]
    output_token_ids: list[int]

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)


def sample_rows(seq: Sequence, draft: list[int]) -> list[Sequence | DraftRow]:
    """What the sampler sees for each of the 1 + len(draft) rows of one request."""
    rows: list[Sequence | DraftRow] = [seq]
    output = seq.output_token_ids
    for i in range(1, len(draft) + 1):
        rows.append(DraftRow(seq.params, seq.prompt_token_ids, output + draft[:i]))
    return rows


def accepted_length(sampled: list[int], draft: list[int]) -> int:
    """How many leading draft tokens the sampled rows reproduce (len(sampled) = len(draft) + 1)."""
    n = 0
    for guess, real in zip(draft, sampled, strict=False):
        if guess != real:
            break
        n += 1
    return n
