"""What the sampler reads of each row's request: a `Sequence`, or a speculative draft's row
(`speculation.verify.DraftRow`: the request as if its draft so far were real)."""

from __future__ import annotations

from typing import Protocol

from tokenfactory.engine.sampling_params import SamplingParams


class SamplingRow(Protocol):
    @property
    def params(self) -> SamplingParams: ...
    @property
    def prompt_token_ids(self) -> list[int]: ...
    @property
    def output_token_ids(self) -> list[int]: ...
    @property
    def num_output_tokens(self) -> int: ...  # seeds a seeded row's noise
