"""Decode steps over static input buffers, batch padded to a bucket, replayed as CUDA graphs.

The buffers (token ids, positions, cache slots, block tables, context lengths, logits) are
allocated once at their largest size. Each decode step pads its inputs on the host up to the
bucket (token 0 at position 0, writing to and reading from the cache's reserved pad block
with context length 1), ships them in one copy into the first rows, replays the bucket's
graph (the runner's one forward, captured) and returns the first rows of the logits. The
attention kernels read context lengths and block tables on the device, so one graph serves
every context length.

Without capture (CPU, or `cuda_graphs=False` with `static_decode=True`) the same buffers and
padding run eagerly: that is how the CPU tests check this logic against the eager path.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import numpy as np
import torch

from tokenfactory.engine.attention import AttentionMetadata
from tokenfactory.engine.step_inputs import StepInputs, TokenFill, ship

if TYPE_CHECKING:
    from tokenfactory.engine.runner import ModelRunner

log = logging.getLogger(__name__)


def batch_buckets(max_batch: int) -> list[int]:
    """1, 2, 4, 8, then every 16 up to 256, then every 32: padding wastes < 12.5% past 8."""
    sizes = [1, 2, 4, 8, *range(16, 257, 16), *range(288, 4097, 32)]
    out = [b for b in sizes if b < max_batch]
    return [*out, max_batch]


class DecodeGraphRunner:
    def __init__(self, runner: ModelRunner, max_batch: int, max_blocks_per_seq: int, capture: bool):
        self.runner = runner
        self.max_batch = max_batch
        self.capture_graphs = capture
        self.buckets = batch_buckets(max_batch)
        model, cache = runner.model, runner.cache
        dev = runner.device
        self.pad_slot = cache.pad_slot
        self.pad_block = cache.pad_block
        self.width = max_blocks_per_seq
        i64 = torch.int64
        self.ids = torch.zeros(max_batch, dtype=i64, device=dev)
        self.positions = torch.zeros(max_batch, dtype=i64, device=dev)
        self.slots = torch.full((max_batch,), self.pad_slot, dtype=i64, device=dev)
        self.context_lens = torch.ones(max_batch, dtype=i64, device=dev)
        self.block_tables = torch.full(
            (max_batch, max_blocks_per_seq), self.pad_block, dtype=i64, device=dev
        )
        self.logits = torch.zeros(
            (max_batch, model.config.vocab_size), dtype=model.dtype, device=dev
        )
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.capture_seconds = 0.0

    def bucket(self, n: int) -> int:
        for b in self.buckets:
            if b >= n:
                return b
        raise ValueError(f"batch {n} exceeds the largest bucket {self.max_batch}")

    def _forward(self, batch: int, width: int) -> None:
        """The step body on the first `batch` rows of the static buffers."""
        r = self.runner
        meta = AttentionMetadata(
            slot_mapping=self.slots[:batch],
            num_decodes=batch,
            decode_block_tables=self.block_tables[:batch, :width],
            decode_context_lens=self.context_lens[:batch],
            decode_splits=r.attention.decode_splits(batch),
        )
        hidden = r.forward(self.ids[:batch], self.positions[:batch], meta, True)
        self.logits[:batch].copy_(r.model.compute_logits(hidden, True))

    def prepare(self) -> None:
        """Capture one graph per bucket, largest first so smaller ones reuse its memory pool."""
        if not self.capture_graphs:
            return
        started = time.monotonic()
        pool = None
        with torch.inference_mode():
            for b in sorted(self.buckets, reverse=True):
                # Warm up on a side stream (Triton compiles, cuBLAS picks its kernels).
                stream = torch.cuda.Stream(self.runner.device)
                stream.wait_stream(torch.cuda.current_stream(self.runner.device))
                with torch.cuda.stream(stream):
                    for _ in range(2):
                        self._forward(b, self.width)
                torch.cuda.current_stream(self.runner.device).wait_stream(stream)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=pool):
                    self._forward(b, self.width)
                pool = graph.pool()
                self.graphs[b] = graph
            torch.cuda.synchronize(self.runner.device)
        self.capture_seconds = time.monotonic() - started
        log.info(
            "captured %d decode CUDA graphs (batch %s) in %.1f s",
            len(self.graphs), self.buckets, self.capture_seconds,
        )  # fmt: skip

    def run(self, inputs: StepInputs, fill: TokenFill | None = None) -> torch.Tensor:
        """Logits [n, vocab] of a decode-only step (valid until the next step); `fill`: input
        tokens still on the device (`ModelRunner.execute`)."""
        n = inputs.num_decodes
        b = self.bucket(n)
        w = inputs.decode_width
        pad = b - n
        tables = np.full((b, w), self.pad_block, dtype=np.int64)
        tables[:n] = inputs.block_tables[:, :w]
        dev = ship(
            {
                "ids": np.pad(inputs.token_ids, (0, pad)),
                "positions": np.pad(inputs.positions, (0, pad)),
                "slots": np.pad(inputs.slots, (0, pad), constant_values=self.pad_slot),
                "context_lens": np.pad(inputs.context_len, (0, pad), constant_values=1),
                "block_tables": tables,
                "sample_rows": inputs.sample_rows,
            },
            self.runner.device,
        )
        self.ids[:b].copy_(dev["ids"])
        if fill is not None:
            fill.apply(self.ids)
        self.positions[:b].copy_(dev["positions"])
        self.slots[:b].copy_(dev["slots"])
        self.context_lens[:b].copy_(dev["context_lens"])
        self.block_tables[:b, :w].copy_(dev["block_tables"])
        graph = self.graphs.get(b)
        if graph is not None:
            graph.replay()
        else:
            self._forward(b, w)
        logits = self.logits[:n]
        if len(inputs.sample_rows) != n:  # a one-token prompt chunk that does not sample
            logits = logits.index_select(0, dev["sample_rows"])
        return logits
