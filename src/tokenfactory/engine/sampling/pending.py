"""`PendingSample`: a step's sampled tokens, on the device now and on the host when asked.

The sampler's work is queued on the device; what the host needs of it (token ids and
logprobs) comes over in one copy per row chunk. On CUDA that copy goes into pinned memory
without blocking and an event marks its end, so `result()` waits for this step alone, not for
work queued after it: the engine can queue the next step first (asynchronous scheduling,
docs/engine.md), whose decodes read their input tokens from `token_ids` on the device.
"""

from __future__ import annotations

import time

import torch

from tokenfactory.engine.sampling.logprobs import DeviceOutput, SamplerOutput, host_output


class PendingSample:
    def __init__(self, parts: list[DeviceOutput]) -> None:
        self._parts = parts
        ids = [p.token_ids for p in parts]
        # [N] sampled ids on the device, in row order.
        self.token_ids: torch.Tensor = ids[0] if len(ids) == 1 else torch.cat(ids)
        self._host: list[torch.Tensor] | None = None
        self._done: torch.cuda.Event | None = None
        self._result: SamplerOutput | None = None
        # When the host could first have read the result (time.monotonic()): on the CPU the
        # work is done when the sampler returns; on CUDA, when `result()` saw it done.
        self.ready_at: float | None = time.monotonic()
        if parts and parts[0].flat.device.type == "cuda":
            self.ready_at = None
            self._host = []
            for p in parts:
                host = torch.empty(p.flat.shape, dtype=p.flat.dtype, pin_memory=True)
                host.copy_(p.flat, non_blocking=True)
                self._host.append(host)
            self._done = torch.cuda.Event()
            self._done.record()

    def result(self) -> SamplerOutput:
        """Token ids and logprobs on the host (waits for this step's sampling on CUDA)."""
        if self._result is not None:
            return self._result
        if self._done is not None:
            self._done.synchronize()
            self.ready_at = time.monotonic()
        out = SamplerOutput(token_ids=[], logprobs=[])
        for i, part in enumerate(self._parts):
            flat = self._host[i] if self._host is not None else part.flat
            piece = host_output(part, flat.tolist())
            out.token_ids += piece.token_ids
            out.logprobs += piece.logprobs
        self._result = out
        return out
