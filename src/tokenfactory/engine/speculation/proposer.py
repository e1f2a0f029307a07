"""The proposer interface: draft tokens for the decoding requests a step lets speculate."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from tokenfactory.engine.sequence import Sequence


@dataclass(frozen=True)
class DraftRequest:
    """A decoding request and the most draft tokens it may verify this step."""

    seq: Sequence
    max_tokens: int


class Proposer(Protocol):
    """Guesses the tokens that follow each request's tokens so far.

    Drafts are deterministic guesses (no draft probabilities): verification keeps the longest
    prefix of the draft that the target's own sampling reproduces, which is exact for greedy
    and sampled requests alike (`verify`). A draft may be shorter than asked, or empty.
    """

    name: str

    def propose(self, requests: list[DraftRequest]) -> Mapping[str, list[int]]:
        """Draft tokens by request id (requests without a guess may be left out)."""
        ...

    def retain(self, live_request_ids: Iterable[str]) -> None:
        """Forget every request not in `live_request_ids` (finished, aborted, preempted)."""
        ...
