"""Prompt lookup (n-gram) drafts: no extra model, just the request's own tokens.

Where an output copies its context (code being edited, JSON echoing its input, quotations,
retrieved passages), the last few tokens have usually appeared before, and what followed them
then is a good guess for what follows now. The proposer looks for the most recent earlier
occurrence of the request's last n tokens (longest n first, down to `min_n`) and proposes the
tokens that followed it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from tokenfactory.engine.speculation.proposer import DraftRequest


class NgramProposer:
    name = "ngram"

    def __init__(self, max_n: int = 4, min_n: int = 2, max_lookback: int = 8192):
        if not 1 <= min_n <= max_n:
            raise ValueError("need 1 <= min_n <= max_n")
        self.max_n = max_n
        self.min_n = min_n
        # Only this many recent tokens are searched: the cost of a lookup stays bounded.
        self.max_lookback = max_lookback

    def propose(self, requests: list[DraftRequest]) -> Mapping[str, list[int]]:
        drafts: dict[str, list[int]] = {}
        for r in requests:
            seq = r.seq
            tokens = seq.all_token_ids[-self.max_lookback :]
            draft = lookup(tokens, r.max_tokens, self.max_n, self.min_n)
            if draft:
                drafts[seq.request_id] = draft
        return drafts

    def retain(self, live_request_ids: Iterable[str]) -> None:
        """Nothing is kept between steps."""


def lookup(tokens: list[int], k: int, max_n: int, min_n: int) -> list[int]:
    """Up to k tokens that followed the latest earlier occurrence of the longest suffix of
    `tokens` (between min_n and max_n tokens long) that occurred before; [] if none did."""
    if k <= 0 or len(tokens) <= min_n:
        return []
    arr = np.asarray(tokens, dtype=np.int64)
    total = len(arr)
    for n in range(min(max_n, total - 1), min_n - 1, -1):
        suffix = arr[total - n :]
        # Windows that start before the suffix itself; the latest match is the best guess.
        windows = sliding_window_view(arr[: total - 1], n)
        hits = np.flatnonzero((windows == suffix).all(axis=1))
        if hits.size:
            start = int(hits[-1]) + n
            return arr[start : start + k].tolist()
    return []
