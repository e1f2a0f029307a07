"""MaskBuilder: fills a step's grammar bitmasks, while the model runs where that pays.

llguidance computes masks in Rust without holding the GIL, so a worker thread can fill them
during the forward pass and the sampler only waits for what is left. `overlap=False` fills
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

    def start(self, rows: list[tuple[int, GrammarMatcher]]) -> PendingMasks:
        """Begin filling the masks of `rows` ((logits row, matcher), rows ascending). The
        matchers must not advance until `result()` has returned."""
        targets = [(m.matcher, i) for i, (_, m) in enumerate(rows)]
        bits = self._bits(len(rows))

        def fill() -> torch.Tensor:
            started = time.perf_counter()
            # llguidance.torch.fill_next_token_bitmask_par, without importing that module
            # (it sets up torch.compile: seconds at startup).
            row_bytes = bits.shape[1] * 4
            if len(targets) == 1:  # one row: no hand-off to llguidance's thread pool
                targets[0][0].unsafe_compute_mask_ptr(bits.data_ptr(), row_bytes)
            else:
                self._executor.unsafe_compute_mask_ptr(
                    targets, bits.data_ptr(), row_bytes, len(rows)
                )
            self.times.fill_s += time.perf_counter() - started
            return bits

        self.times.steps += 1
        running = None
        if self.overlap:
            if self._worker is None:
                self._worker = ThreadPoolExecutor(1, thread_name_prefix="grammar-masks")
            running = self._worker.submit(fill)
        return PendingMasks([r for r, _ in rows], fill, running, self.times)

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
