"""MaskBuilder: fills a step's grammar bitmasks, while the model runs where that pays.

llguidance computes masks in Rust without holding the GIL, so a worker thread can fill them
during the forward pass and the sampler only waits for what is left. `overlap=False` fills
them on the caller's thread (when asked for the result), for machines where the two would
only fight over the same cores.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

import llguidance
import torch

from tokenfactory.engine.constraints.matcher import GrammarMatcher
from tokenfactory.engine.sampling.grammar_mask import GrammarMasks


class PendingMasks:
    """A step's masks, being filled; `result()` waits for them."""

    def __init__(self, rows: list[int], fill: Future[None] | None, run_inline) -> None:
        self._rows = rows
        self._fill = fill
        self._run_inline = run_inline

    def result(self) -> GrammarMasks:
        if self._fill is None:
            bits = self._run_inline()
        else:
            bits = self._fill.result()
        return GrammarMasks(rows=self._rows, bits=bits)


class MaskBuilder:
    def __init__(self, vocab_size: int, overlap: bool = True, threads: int | None = None) -> None:
        self.vocab_size = vocab_size
        self.overlap = overlap
        self._executor = llguidance.LLExecutor(threads)
        self._buffer = _bitmask(0, vocab_size)
        self._worker: ThreadPoolExecutor | None = None

    def start(self, rows: list[tuple[int, GrammarMatcher]]) -> PendingMasks:
        """Begin filling the masks of `rows` ((logits row, matcher), rows ascending). The
        matchers must not advance until `result()` has returned."""
        matchers = [m.matcher for _, m in rows]
        bits = self._bits(len(rows))

        def fill() -> torch.Tensor:
            # What llguidance.torch's fill_next_token_bitmask_par does, without importing
            # that module (it pulls in torch.compile, ~2 s at startup).
            targets = [(m, i) for i, m in enumerate(matchers)]
            words = bits.shape[1]
            self._executor.unsafe_compute_mask_ptr(
                targets, bits.data_ptr(), words * 4, len(targets)
            )
            return bits

        row_ids = [r for r, _ in rows]
        if not self.overlap:
            return PendingMasks(row_ids, None, fill)
        if self._worker is None:
            self._worker = ThreadPoolExecutor(1, thread_name_prefix="grammar-masks")
        return PendingMasks(row_ids, self._worker.submit(fill), fill)

    def _bits(self, n: int) -> torch.Tensor:
        """n rows of the reused mask buffer (one step's masks are read before the next's)."""
        if self._buffer.shape[0] < n:
            size = max(n, 2 * self._buffer.shape[0])
            self._buffer = _bitmask(size, self.vocab_size)
        return self._buffer[:n]

    def close(self) -> None:
        if self._worker is not None:
            self._worker.shutdown(wait=True)
            self._worker = None


def _bitmask(rows: int, vocab_size: int) -> torch.Tensor:
    return torch.full((rows, (vocab_size + 31) // 32), -1, dtype=torch.int32)
