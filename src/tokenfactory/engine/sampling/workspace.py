"""Scratch memory and row indices shared by the sampling passes."""

from __future__ import annotations

import torch


class _Workspace:
    """Scratch memory for [rows, vocab] temporaries, reused across calls (at most
    CHUNK_ROWS x vocab float32 each: 12.6 MB at a 49152 vocabulary; three names are used).

    Fresh buffers this large may come straight from mmap and be page-faulted in on every
    call, which measurably slows large batches. Nothing is read before it is written in the
    same call, so reuse cannot carry data between calls.
    """

    def __init__(self) -> None:
        self._buffers: dict[tuple[str, torch.device], torch.Tensor] = {}

    def get(self, name: str, rows: int, cols: int, device: torch.device) -> torch.Tensor:
        buf = self._buffers.get((name, device))
        if buf is None or buf.numel() < rows * cols:
            buf = torch.empty(rows * cols, device=device)
            self._buffers[(name, device)] = buf
        return buf[: rows * cols].view(rows, cols)


def to_device(values: list, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Host values as a tensor on `device`. To CUDA through pinned memory without blocking:
    a plain copy would wait for all the work queued before it (the step's forward, or with
    asynchronous scheduling the next step's too)."""
    host = torch.tensor(values, dtype=dtype)
    if device.type == "cuda":
        return host.pin_memory().to(device, non_blocking=True)
    return host.to(device)


def _index(rows: list[int], device: torch.device) -> torch.Tensor:
    return to_device(rows, torch.long, device)


def _scratch(work: torch.Tensor | None, rows: int) -> torch.Tensor | None:
    return None if work is None else work[:rows]
