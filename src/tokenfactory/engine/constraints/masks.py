"""MaskBuilder: fills a step's grammar bitmasks, while the model runs where that pays.

llguidance computes masks in Rust without holding the GIL, so a worker thread can fill them
during the forward pass and the sampler only waits for what is left. A constrained request
verifying a speculative draft gets one mask per verified position. `overlap=False` fills
them on the caller's thread when the sampler asks, for machines where the two would only
fight over the same cores.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import llguidance
import torch

from tokenfactory.engine.constraints.matcher import GrammarMatcher
from tokenfactory.engine.sampling.grammar_mask import GrammarMasks


@dataclass
class MaskTimes:
    """Where constrained steps spent their mask time, summed since the builder was made."""

    steps: int = 0
    fill_s: float = 0.0  # computing masks (on whichever thread)
    wait_s: float = 0.0  # the step blocked on them: all of fill_s inline, the rest overlapped


class PendingMasks:
    """A step's masks, being filled; `result()` waits for them."""

    def __init__(
        self,
        rows: list[int],
        fill: Callable[[], torch.Tensor],
        running: Future[torch.Tensor] | None,
        times: MaskTimes,
    ) -> None:
        self._rows = rows
        self._fill = fill
        self._running = running
        self._times = times

    def result(self) -> GrammarMasks:
        started = time.perf_counter()
        bits = self._fill() if self._running is None else self._running.result()
        self._times.wait_s += time.perf_counter() - started
        return GrammarMasks(rows=self._rows, bits=bits)


class MaskBuilder:
    def __init__(self, vocab_size: int, overlap: bool = True, threads: int | None = None) -> None:
        """`threads`: llguidance's pool for a step's masks (None: its default, 80% of CPUs)."""
        self.vocab_size = vocab_size
        self.overlap = overlap
        self.times = MaskTimes()
        self._executor = llguidance.LLExecutor(threads)
        self._buffer = _bitmask(0, vocab_size)
        self._worker: ThreadPoolExecutor | None = None

    def start(self, rows: list[tuple[int, GrammarMatcher, list[int]]]) -> PendingMasks:
        """Begin filling the masks of `rows`: (first logits row, matcher, draft), ascending.
        A request verifying a draft d_1..d_k owns k + 1 rows; row i is masked for the grammar
        after d_1..d_i. The matchers must not advance until `result()` has returned."""
        mask_rows = [r + i for r, _, draft in rows for i in range(1 + len(draft))]
        bits = self._bits(len(mask_rows))

        def fill() -> torch.Tensor:
            started = time.perf_counter()
            row_bytes = bits.shape[1] * 4
            at = 0
            undrafted: list[tuple[llguidance.LLMatcher, int]] = []
            for _, m, draft in rows:
                if draft:
                    _fill_along_draft(m.matcher, draft, bits[at : at + 1 + len(draft)])
                else:
                    undrafted.append((m.matcher, at))
                at += 1 + len(draft)
            if len(undrafted) == 1:  # one row: no hand-off to llguidance's thread pool
                matcher, i = undrafted[0]
                matcher.unsafe_compute_mask_ptr(bits[i].data_ptr(), row_bytes)
            elif undrafted:
                # llguidance.torch.fill_next_token_bitmask_par, without importing that module
                # (it sets up torch.compile: seconds at startup).
                self._executor.unsafe_compute_mask_ptr(
                    undrafted, bits.data_ptr(), row_bytes, bits.shape[0]
                )
            self.times.fill_s += time.perf_counter() - started
            return bits

        self.times.steps += 1
        running = None
        if self.overlap:
            if self._worker is None:
                self._worker = ThreadPoolExecutor(1, thread_name_prefix="grammar-masks")
            running = self._worker.submit(fill)
        return PendingMasks(mask_rows, fill, running, self.times)

    def _bits(self, n: int) -> torch.Tensor:
        """n rows of the reused mask buffer (one step's masks are read before the next's)."""
        if self._buffer.shape[0] < n:
            self._buffer = _bitmask(max(n, 2 * self._buffer.shape[0]), self.vocab_size)
        return self._buffer[:n]

    def close(self) -> None:
        if self._worker is not None:
            self._worker.shutdown(wait=True)
            self._worker = None


def _bitmask(rows: int, vocab_size: int) -> torch.Tensor:
    return torch.full((rows, (vocab_size + 31) // 32), -1, dtype=torch.int32)


def _fill_along_draft(matcher: llguidance.LLMatcher, draft: list[int], bits: torch.Tensor) -> None:
    """Masks for a verify's rows: advance along the draft, then roll back. Rows after a draft
    token the grammar refuses allow everything: the row before it cannot sample that token,
    so verification stops there and their samples are discarded."""
    row_bytes = bits.shape[1] * 4
    consumed = 0
    for i in range(len(draft) + 1):
        if i > consumed:
            bits[i:].fill_(-1)
            break
        matcher.unsafe_compute_mask_ptr(bits[i].data_ptr(), row_bytes)
        if i < len(draft):
            consumed += matcher.try_consume_tokens([draft[i]])
    if consumed and not matcher.rollback(consumed):
        raise RuntimeError(f"the grammar matcher could not roll back {consumed} draft tokens")
